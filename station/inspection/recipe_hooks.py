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
    return hooks
