"""The cycle hooks a recipe asks for (see station.inspection.hooks), built for one run."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from station.inspection.hooks import CycleHook
    from station.inspection.models import DetectorSet
    from station.recipe import Recipe
    from station.storage.db import Database


def recipe_hooks(recipe: Recipe, db: Database, detectors: DetectorSet) -> list[CycleHook]:
    """Every hook of the recipe, in the order they see a shot."""
    hooks: list[CycleHook] = []
    from station.inspection.shadow import shadow_hook

    shadow = shadow_hook(recipe, db)  # a candidate beside the live models (retrain.shadow)
    if shadow is not None:
        hooks.append(shadow)
    from station.inspection.drift_hook import active_calibration_doc, drift_hook

    drift = drift_hook(recipe, db, active_calibration_doc(detectors))
    if drift is not None:  # image statistics and drift charts (monitoring.drift)
        hooks.append(drift)
    from station.inspection.disk_hook import disk_hook

    disk = disk_hook(recipe)  # free space on the data, journal and database disks
    if disk is not None:
        hooks.append(disk)
    from station.inspection.material_hook import material_hook

    material = material_hook(recipe)  # last: the hooks above still see a wrong-material shot
    if material is not None:  # monitoring.material_check: a shot unlike training faults the part
        hooks.append(material)
    return hooks
