"""What the old three-pose recipe cannot see, on the same defective twin sheets as a full one.

The seed report's lab recipe shot three poses 12 mm apart over the sheet centre, from 350 mm
with a 12 mm lens ((388, -6), (400, 0), (412, 6) mm). Its footprints cover a few per cent of a
300 x 300 mm sheet. This script makes N defective twin sheets (defects anywhere on the sheet,
`TwinWorld.make_sheet`), takes each defect's ground truth in the robot base frame
(`TwinWorld.sheet_truth`: bounding box of its drawn footprint) and counts, per recipe, the
defects that no shot sees at all (the box meets no footprint: a sure miss whatever the detector
does) and the defective sheets none of whose defects any shot sees (passed for certain).
Footprints come from the twin's own camera model (`twin/truth.py` pose, `twin/optics.py`
footprint). Coverage is the share of the nominal sheet rectangle inside the union of footprints,
rasterised at 0.5 mm.

    .venv/bin/python tools/three_pose_misses.py [--recipe glassfiber] [--sheets 200] [--seed 7]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from station.recipe import Pose, Recipe, load_recipe  # noqa: E402
from station.twin import optics  # noqa: E402
from station.twin.world import TwinWorld, derive_seed, pose_tcp  # noqa: E402

THREE_POSES = ((388.0, -6.0, 350.0), (400.0, 0.0, 350.0), (412.0, 6.0, 350.0))
RASTER_MM = 0.5


def three_pose(recipe: Recipe) -> Recipe:
    """`recipe` with the seed report's three poses and its 12 mm lens focused at 350 mm."""
    lens = recipe.camera.lens.model_copy(
        update={"focal_length_mm": 12.0, "focus_distance_mm": 350.0}
    )
    poses = [
        Pose(name=n, position_mm=xyz, rotvec_rad=(3.14159, 0.0, 0.0))
        for n, xyz in zip(("left", "centre", "right"), THREE_POSES, strict=True)
    ]
    return recipe.model_copy(
        update={
            "name": f"{recipe.name} (three poses, 12 mm lens)",
            "camera": recipe.camera.model_copy(update={"lens": lens}),
            "robot": recipe.robot.model_copy(update={"poses": poses, "poses_file": None}),
        }
    )


def footprints(recipe: Recipe) -> list[np.ndarray]:
    """Each shot's footprint on the table (4 x 2, base-frame mm), as the twin's camera sees."""
    world = TwinWorld(recipe)
    out = []
    for p in recipe.robot.poses:
        pose = world.truth.pose(pose_tcp(p))
        out.append(optics.footprint(world.intrinsics, pose, world.truth.margin_px(0.0)))
    return out


def box_meets_quad(box: list[float], quad: np.ndarray) -> bool:
    """Whether an axis-aligned box [x0, y0, x1, y1] and a convex quadrilateral overlap
    (separating axes: the box's two axes and the quad's four edge normals)."""
    x0, y0, x1, y1 = box
    rect = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    axes = [np.array([1.0, 0.0]), np.array([0.0, 1.0])]
    axes += [
        np.array([-(b - a)[1], (b - a)[0]]) for a, b in zip(quad, np.roll(quad, -1, 0), strict=True)
    ]
    for ax in axes:
        r, q = rect @ ax, quad @ ax
        if r.max() < q.min() or q.max() < r.min():
            return False
    return True


def coverage(recipe: Recipe, feet: list[np.ndarray]) -> float:
    """Share of the nominal sheet rectangle inside the union of footprints."""
    s = recipe.sheet
    x0 = s.center_mm[0] - s.width_mm / 2
    y0 = s.center_mm[1] - s.height_mm / 2
    w, h = int(round(s.width_mm / RASTER_MM)), int(round(s.height_mm / RASTER_MM))
    mask = np.zeros((h, w), np.uint8)
    for q in feet:  # texel (col, row) centre at x0 + (col + 0.5) * RASTER_MM
        px = np.round(((q - [x0, y0]) / RASTER_MM - 0.5) * 16).astype(np.int32)
        cv2.fillPoly(mask, [px], 1, cv2.LINE_8, 4)
    return float(mask.mean())


@dataclass
class Tally:
    name: str
    poses: int
    coverage: float
    sheets: int = 0
    defects: int = 0
    unseen: int = 0
    blind_sheets: int = 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", default="glassfiber", help="the full-coverage recipe")
    ap.add_argument("--sheets", type=int, default=200, help="defective sheets to make")
    ap.add_argument("--seed", type=int, default=7, help="sheet seeds derive from it")
    args = ap.parse_args()
    full = load_recipe(args.recipe)
    recipes = [three_pose(full), full]
    feet = [footprints(r) for r in recipes]
    tallies = [
        Tally(r.name, len(r.robot.poses), coverage(r, f))
        for r, f in zip(recipes, feet, strict=True)
    ]
    world = TwinWorld(full)
    t0 = time.perf_counter()
    for i in range(args.sheets):
        world.present(world.make_sheet(derive_seed(args.seed, 1000 + i), defective=True))
        truth = world.sheet_truth()
        for tally, f in zip(tallies, feet, strict=True):
            seen = [any(box_meets_quad(d["bbox_mm"], q) for q in f) for d in truth]
            tally.sheets += 1
            tally.defects += len(truth)
            tally.unseen += seen.count(False)
            tally.blind_sheets += not any(seen)
    print(
        f"{args.sheets} defective twin sheets (seed {args.seed}), defects anywhere, sizes "
        f"{full.twin.defect_size_mm[0]:g}-{full.twin.defect_size_mm[1]:g} mm; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    head = (
        f"{'recipe':<44} {'poses':>5} {'sheets':>6} {'defects':>7} {'seen by no shot':>16} "
        f"{'sheets, none seen':>18} {'coverage':>9}"
    )
    print(head)
    print("-" * len(head))
    for t in tallies:
        print(
            f"{t.name:<44} {t.poses:>5} {t.sheets:>6} {t.defects:>7} "
            f"{t.unseen:>7} ({100 * t.unseen / max(t.defects, 1):5.1f} %) "
            f"{t.blind_sheets:>8} ({100 * t.blind_sheets / max(t.sheets, 1):5.1f} %) "
            f"{100 * t.coverage:8.1f} %"
        )


if __name__ == "__main__":
    main()
