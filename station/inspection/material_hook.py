"""The material check as a cycle hook: each shot against the training material before the
detectors (station.monitoring.material); a shot of another material faults the part."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from station.inspection.hooks import CycleHook

if TYPE_CHECKING:
    import numpy as np

    from station.inspection.recorder import PartRecord
    from station.monitoring.material import MaterialCheck
    from station.recipe import Recipe


class MaterialHook(CycleHook):
    name = "material"

    def __init__(self, check: MaterialCheck) -> None:
        self.check = check

    def shot(self, part: PartRecord, pose_name: str, image: np.ndarray) -> dict[str, Any]:
        return self.check.check(image, f"shot {pose_name}")


def material_hook(recipe: Recipe) -> MaterialHook | None:
    """The recipe's material check (None when monitoring.material_check is off); a missing or
    stale material model is a StationError naming the fix."""
    if not recipe.monitoring.material_check.enabled:
        return None
    from station.monitoring.material import MaterialCheck

    return MaterialHook(MaterialCheck.load(recipe))
