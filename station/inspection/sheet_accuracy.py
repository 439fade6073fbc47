"""How far sheet-map defect centres lie from the twin's truth, per camera model.

Measured by tests/test_sheet_map.py and tools/bench_cell_calibration.py on the same terms: the
twin's ground-truth masks stand in for anomaly maps (2 x threshold inside), so the figure is
the geometry's (camera model, projection, grid), not a detector's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from station.inspection.sheet import PartSheet
from station.twin.world import TwinWorld, pose_tcp

if TYPE_CHECKING:
    from station.cellcal.store import CameraModel
    from station.recipe import Recipe


def defect_centre_errors(
    recipe: Recipe,
    cameras: Mapping[str, CameraModel],
    world_seed: int,
    sheets: int,
    noise_prefix: Sequence[int] = (),
) -> tuple[dict[str, list[float]], int]:
    """Per camera model (`cameras`, which must include "exact": the twin's true camera), the
    distance (mm) from each defect's truth (the centroid of its drawn footprint,
    `TwinWorld.sheet_truth`) to the nearest defect region of the sheet map, over `sheets`
    defective sheets; and how many defects were left out because the exact map sees only part
    of them (the centroid of what is seen is not the truth's)."""
    world = TwinWorld(recipe, seed=world_seed)
    errors: dict[str, list[float]] = {name: [] for name in cameras}
    partial = 0
    for k in range(sheets):
        world.present(world.make_sheet(1000 + k, defective=True))
        shots = []
        for i, pose in enumerate(recipe.robot.poses):
            tcp = pose_tcp(pose)
            mask = world.render(tcp, noise_seed=[*noise_prefix, k, i]).mask
            shots.append((pose.name, list(tcp), mask))
        maps = {}
        for name, camera in cameras.items():
            part = PartSheet(recipe, camera)
            for pose_name, tcp, mask in shots:
                part.add(pose_name, tcp, {"truth": (mask > 0).astype(np.float32) * 2.0})
            maps[name] = part.result()
        truth = world.sheet_truth()
        whole = [
            np.array(t["centroid_mm"]) for t in truth if maps["exact"].sees_whole(t["bbox_mm"])
        ]
        partial += len(truth) - len(whole)
        for name, sheet in maps.items():
            found = [np.array(f.centre_mm) for f in sheet.defects()]
            errors[name] += [
                min((float(np.hypot(*(f - t))) for f in found), default=math.inf) for t in whole
            ]
    return errors, partial
