"""Regenerate docs/twin_examples.png: twin shots of good and defective sheets, mask outlines.

Usage: python tools/make_twin_examples.py [--out docs/twin_examples.png]
Each tile is a full-resolution 320x256 crop of a 640x512 shot from the recipe's centre pose; the
red outline is the ground-truth mask the twin stores with the shot.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import cv2
import numpy as np

from station.recipe import load_recipe
from station.twin import TwinWorld
from station.twin.sheet import DefectSpec
from station.twin.world import pose_tcp

REPO = Path(__file__).resolve().parents[1]
TILE_W, TILE_H = 320, 256
# (title, kind or None, size mm, angle rad, sheet seed, weave)
TILES = [
    ("good, plain weave", None, 0, 0.0, 11, "plain"),
    ("good, twill weave", None, 0, 0.0, 12, "twill"),
    ("hex nut", "hex_nut", 10, 0.3, 13, "plain"),
    ("washer", "washer", 12, 0.0, 14, "plain"),
    ("screw", "screw", 16, 0.5, 15, "plain"),
    ("screwdriver", "tool", 12, -0.5, 17, "plain"),
    ("metal part", "metal_part", 9, 0.9, 16, "twill"),
    ("fold", "fold", 14, 0.35, 18, "plain"),
    ("crease", "crease", 14, -0.5, 19, "plain"),
    ("contamination", "contamination", 12, 0.0, 20, "plain"),
    ("cut", "cut", 14, 0.7, 21, "plain"),
    ("frayed area", "frayed_edge", 12, 0.2, 22, "twill"),
    ("missing roving", "missing_roving", 10, 0.0, 23, "plain"),
    ("broken roving", "broken_roving", 12, 0.0, 24, "plain"),
    ("two defects", "two", 10, 0.0, 25, "plain"),
    ("good, other sheet", None, 0, 0.0, 26, "plain"),
]


def tile(world: TwinWorld, title: str, kind: str | None, size: float, angle: float, seed: int,
         weave: str) -> np.ndarray:
    recipe = world.recipe
    centre = recipe.robot.poses[len(recipe.robot.poses) // 2]
    tcp = pose_tcp(centre)
    base = dataclasses.replace(world.make_sheet(seed, defective=False), weave=weave)
    # put the defect under the centre pose (sheet-local coordinates)
    at = base.table_to_local(np.array([tcp[:2]]))[0]
    defects: tuple[DefectSpec, ...] = ()
    if kind == "two":
        defects = (
            DefectSpec("hex_nut", (float(at[0]) - 5, float(at[1]) + 3), 7, 0.2, seed),
            DefectSpec("contamination", (float(at[0]) + 6, float(at[1]) - 4), 8, 0.0, seed + 1),
        )
    elif kind:
        defects = (DefectSpec(kind, (float(at[0]), float(at[1])), size, angle, seed),)
    world.present(dataclasses.replace(base, defects=defects))
    shot = world.render(tcp, noise_seed=[seed, 7, 1])
    h, w = shot.image.shape[:2]
    y0, x0 = (h - TILE_H) // 2, (w - TILE_W) // 2
    img = cv2.cvtColor(shot.image[y0:y0 + TILE_H, x0:x0 + TILE_W], cv2.COLOR_GRAY2BGR)
    mask = shot.mask[y0:y0 + TILE_H, x0:x0 + TILE_W]
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(img, contours, -1, (0, 0, 255), 1, cv2.LINE_AA)
    cv2.rectangle(img, (0, 0), (TILE_W - 1, 22), (30, 30, 30), -1)
    colour = (120, 220, 120) if not defects else (90, 90, 255)
    cv2.putText(img, title, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs/twin_examples.png"))
    ap.add_argument("--recipe", default=str(REPO / "recipes/glassfiber.yaml"))
    args = ap.parse_args()
    world = TwinWorld(load_recipe(args.recipe))
    tiles = [tile(world, *t) for t in TILES]
    cols = 4
    pad = 4
    rows = []
    for r in range(0, len(tiles), cols):
        row = tiles[r:r + cols]
        parts = []
        for t in row:
            parts += [t, np.full((TILE_H, pad, 3), 255, np.uint8)]
        rows += [np.hstack(parts[:-1]), np.full((pad, parts[0].shape[1] * cols + pad * (cols - 1),
                                                 3), 255, np.uint8)]
    grid = np.vstack(rows[:-1])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), grid, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]}, {out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
