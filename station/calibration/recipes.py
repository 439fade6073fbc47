"""The recipe loader of the station's commands: a recipe with its detector names checked
against the detector registry (station.detectors.registry) and its decision.policy against the
calibration policies' registry (station.calibration.policies.RULES), the one list of each.

The recipe layer imports neither; this layer sits above both, so it hands both lists over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from station.calibration.policies import RULES
from station.detectors import registry

if TYPE_CHECKING:
    from station.recipe import Recipe

__all__ = ["load_recipe", "parse_recipe"]


def load_recipe(name_or_path: str, planning: bool = False) -> Recipe:
    """The recipe `name_or_path` (recipes/<name>.yaml or a path), names checked; `planning`:
    its robot.poses_file may not exist yet (station plan-poses writes it)."""
    return registry.load_recipe(name_or_path, tuple(RULES), planning)


def parse_recipe(text: str, source: str = "<string>", planning: bool = False) -> Recipe:
    """A recipe from YAML text, names checked (`planning` as for `load_recipe`)."""
    return registry.parse_recipe(text, source, tuple(RULES), planning)
