"""Sample sheet maps for the synthetic review data (station.review.sample).

Plainly a sample, yet built the way the station builds one: the sample part's three shots lie
side by side on the table (axis-aligned footprints overlapping by a fifth, a fixed 0.25 mm/px;
no camera model, and the camera source says so). Each shot's anomaly map, in units of its
detector's threshold, is pasted into sheet coordinates and the views are fused by their
maximum; the defects are the connected regions at or over the threshold, with their centre,
area, peak and the shots whose footprints hold the centre. Nothing here is used on the line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from station.geometry.sheet_map import SheetDefect
from station.storage.parts import PartRecord, SheetMapRecord

SAMPLE_MM_PER_PX = 0.25  # the sample camera's scale at the table; the map keeps it
SAMPLE_ORIGIN_MM = (300.0, -40.0)  # the first footprint's corner in the robot base frame
OVERLAP = 0.2  # of a shot's width, between neighbours
CAMERA_SOURCE = "sample data: axis-aligned footprints, no camera model"
FUSION = "max"

# shot map (H x W float, in units of the threshold) for a pose index and detector index
ShotMaps = Callable[[int, int], np.ndarray]


def footprints(
    poses: Sequence[str], size: tuple[int, int]
) -> tuple[dict[str, list[list[float]]], list[int]]:
    """Each pose's 4 corners in mm, and the column of the map where its shot starts."""
    width, height = size
    step = max(1, round(width * (1 - OVERLAP)))
    m = SAMPLE_MM_PER_PX
    ox, oy = SAMPLE_ORIGIN_MM
    out: dict[str, list[list[float]]] = {}
    cols = []
    for i, pose in enumerate(poses):
        x0, x1 = ox + i * step * m, ox + (i * step + width) * m
        y0, y1 = oy, oy + height * m
        out[pose] = [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
        cols.append(i * step)
    return out, cols


def build_sheet_map(
    part: PartRecord, detectors: Sequence[str], shot_maps: ShotMaps, png_abs: str, png_rel: str
) -> SheetMapRecord:
    """Fuse `part`'s shot maps into a sheet map, write its colour PNG to `png_abs`."""
    poses = [shot.pose_name for shot in part.shots]
    width, height = part.shots[0].width, part.shots[0].height
    corners, cols = footprints(poses, (width, height))
    map_w = cols[-1] + width
    fused = {d: np.full((height, map_w), -np.inf, np.float32) for d in detectors}
    for i, col in enumerate(cols):
        for j, d in enumerate(detectors):
            view = fused[d][:, col : col + width]
            np.maximum(view, shot_maps(i, j), out=view)
    m = SAMPLE_MM_PER_PX
    x0, y0 = SAMPLE_ORIGIN_MM
    extent = [x0, y0, x0 + map_w * m, y0 + height * m]
    defects = [dfc for d in detectors for dfc in _regions(fused[d], d, corners, (x0, y0))]
    defects.sort(key=lambda dfc: -dfc.peak)
    worst = np.max(np.stack(list(fused.values())), axis=0)
    u8 = np.clip(worst / 2.0 * 255, 0, 255).astype(np.uint8)  # 2x threshold is full scale
    png = cv2.applyColorMap(u8, cv2.COLORMAP_JET)
    if not cv2.imwrite(png_abs, png):
        raise OSError(f"cannot write {png_abs}")
    inset = min(1.0, (extent[3] - extent[1]) / 4)
    region = [extent[0] + inset, extent[1] + inset, extent[2] - inset, extent[3] - inset]
    return SheetMapRecord(
        png_path=png_rel, extent_mm=extent, mm_per_px=m, fusion=FUSION,
        camera_source=CAMERA_SOURCE, region_mm=region, footprints=corners, defects=defects,
    )  # fmt: skip


def _regions(
    fused: np.ndarray,
    detector: str,
    corners: dict[str, list[list[float]]],
    origin: tuple[float, float],
) -> list[SheetDefect]:
    """The connected regions of `fused` at or over 1 (the threshold), as sheet defects."""
    mask = (fused >= 1.0).astype(np.uint8)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    m = SAMPLE_MM_PER_PX
    out = []
    for k in range(1, n):
        cx = origin[0] + (centroids[k][0] + 0.5) * m
        cy = origin[1] + (centroids[k][1] + 0.5) * m
        seen = tuple(
            pose
            for pose, c in corners.items()
            if c[0][0] <= cx <= c[2][0] and c[0][1] <= cy <= c[2][1]
        )
        out.append(
            SheetDefect(
                centre_mm=(round(cx, 3), round(cy, 3)),
                area_mm2=round(float(stats[k, cv2.CC_STAT_AREA]) * m * m, 4),
                peak=round(float(fused[labels == k].max()), 4),
                detector=detector,
                shots=seen,
            )
        )
    return out
