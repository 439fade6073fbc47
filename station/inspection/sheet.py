"""A part's sheet map during inspection and calibration: shot maps onto the sheet, fused.

`PartSheet(recipe, camera)` holds one part's `SheetMapper` (station.geometry.sheet_map) over the
recipe's inspected region (station.geometry.coverage.region_rect) at `decision.sheet_map_mm_per_px`,
fused by `decision.sheet_fusion`. Each scored shot is added with the robot's reported TCP
(live) or the recipe pose of its name (offline, calibration) and its raw detector maps; the
maps cover the shot's `preprocess.crop` window. The camera model is `inspection_camera`:
exact on the twin, else the cell calibration or the nominal `tcp_offset_mm` (its `source`
says which). Raw scores go in; thresholds are applied after (the decision rule divides).
Threshold calibration builds the same map for captured parts (station.calibration.scores
`sheet_map_peaks`: same grid, fusion, views from `station.geometry.sheet_map.shot_view`, recipe
poses).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from station.cellcal.store import CameraModel
from station.errors import Misplaced, NotInspected, StationError
from station.geometry.coverage import checks_placement
from station.geometry.placement import Placement, find_recipe_sheet, recipe_mosaic
from station.geometry.sheet_map import SheetMap, recipe_mapper, shot_view
from station.imaging import saturated_mask
from station.inspection.faults import Fault, classify
from station.inspection.recorder import Recorder
from station.inspection.results import SheetOutcome, Timings
from station.recipe import Recipe
from station.storage.parts import PartRecord


class SheetMapError(StationError):
    """The part's sheet map could not be built (the part is faulted, never passed)."""


def pose_tcp(recipe: Recipe, name: str, robot_pose: Sequence[float] | None = None) -> list[float]:
    """The TCP of a shot: the robot's read-back pose when it has one, else the recipe's pose
    of that name."""
    if robot_pose is not None and len(robot_pose) == 6:
        return [float(v) for v in robot_pose]
    for p in recipe.robot.poses:
        if p.name == name:
            return [*p.position_mm, *p.rotvec_rad]
    raise SheetMapError(f"shot {name!r} is no pose of recipe {recipe.name} and has no robot pose")


class PartSheet:
    """One part's sheet map, built shot by shot (on the inference thread) and read once."""

    def __init__(self, recipe: Recipe, camera: CameraModel) -> None:
        self.recipe = recipe
        self.camera = camera
        self.mapper = recipe_mapper(recipe, camera.table_to_base)
        self.edges = (  # the sheet's edges (sheet.check_placement)
            recipe_mosaic(recipe, camera.table_to_base) if checks_placement(recipe) else None
        )
        self.error: str | None = None
        self._lock = threading.Lock()

    def add(
        self,
        name: str,
        robot_pose: Sequence[float] | None,
        maps: Mapping[str, np.ndarray],
        image: np.ndarray | None = None,
    ) -> None:
        """Fuse one shot's raw maps; where the shot `image` is clipped (station.imaging
        `saturated_mask`) they give way to the other views'. A failure is kept (and raised by
        `result`)."""
        with self._lock:
            if self.error is not None:
                return
            try:
                view = shot_view(
                    self.camera,
                    name,
                    pose_tcp(self.recipe, name, robot_pose),
                    self.recipe.preprocess.crop,
                )
                saturated = None if image is None else saturated_mask(image)
                self.mapper.add(view, maps, saturated)
                if self.edges is not None and image is not None:
                    self.edges.add(view, image)
            except (StationError, ValueError, np.linalg.LinAlgError) as exc:
                msg = exc.message if isinstance(exc, StationError) else str(exc)
                self.error = f"shot {name}: {msg}"

    def result(self) -> SheetMap:
        with self._lock:
            if self.error is not None:
                raise SheetMapError(f"sheet map not built: {self.error}")
            return self.mapper.result()

    def placement(self) -> Placement | None:
        """Where the sheet was found in the shots (None: the recipe does not check)."""
        if self.edges is None:
            return None
        with self._lock:
            values = self.edges.result()
        return find_recipe_sheet(values, self.edges.grid, self.recipe)


def find_placement(
    recipe: Recipe, camera: CameraModel, shots: Iterable[tuple[str, Sequence[float], np.ndarray]]
) -> Placement:
    """Where the sheet lies in a part's shots (pose name, robot pose, image), as inspection
    finds it (`station capture` reports the line's placing this way)."""
    mosaic = recipe_mosaic(recipe, camera.table_to_base)
    for name, robot_pose, image in shots:
        view = shot_view(camera, name, pose_tcp(recipe, name, robot_pose), recipe.preprocess.crop)
        mosaic.add(view, image)
    return find_recipe_sheet(mosaic.result(), mosaic.grid, recipe)


def check_placement(placement: Placement | None) -> None:
    """Misplaced when the sheet reaches past the region or its edges were not found."""
    if placement is not None and placement.problem is not None:
        raise Misplaced(f"not inspected whole: {placement.problem}")


def part_peaks(sheet: SheetMap, detectors: Sequence[str]) -> dict[str, float]:
    """Each detector's raw peak on the fused map; SheetMapError when one has no map or no
    cell seen (a sheet map that saw nothing never passes a part)."""
    peaks = sheet.peaks()
    missing = [n for n in detectors if not np.isfinite(peaks.get(n, np.nan))]
    if missing:
        raise SheetMapError(
            f"the sheet map of {', '.join(missing)} sees no cell of the region "
            f"{[round(v, 1) for v in sheet.region_mm]} mm: check the poses and the camera model"
        )
    return {n: peaks[n] for n in detectors}


def not_inspected_limit_mm(recipe: Recipe) -> float:
    """How far across a region of the sheet left uninspected (seen by no shot, or only
    saturated) may reach before a verdict cannot stand: `coverage.smallest_defect_mm`. A
    region whose extent stays below it cannot hold a whole defect that matters, however thin."""
    return recipe.coverage.smallest_defect_mm


def check_seen(sheet: SheetMap, recipe: Recipe) -> tuple[float, float]:
    """(mm² of the region no shot sees, mm² seen only saturated); NotInspected when one region
    of either (a coverage gap; glare) reaches `not_inspected_limit_mm` across."""
    limit = not_inspected_limit_mm(recipe)
    gap = f"a coverage gap: station plan-poses --recipe {recipe.name}"
    totals = []
    for regions, what, why, glare in (
        (sheet.unseen_regions(), "seen by no shot", gap, False),
        (sheet.blind_regions(), "seen only saturated", "glare or a bright object", True),
    ):
        total = sum(r.area_mm2 for r in regions)
        if regions and regions[0].extent_mm >= limit:
            r = regions[0]
            x, y = r.centre_mm
            raise NotInspected(
                f"not inspected: a region {r.extent_mm:.1f} mm across ({r.area_mm2:.1f} mm²) at "
                f"({x:.0f}, {y:.0f}) mm {what} ({why}; {total:.1f} mm² in all; a "
                f"{limit:g} mm defect could lie in it)",
                glare=glare,
            )
        totals.append(total)
    return totals[0], totals[1]


def finish_sheet(
    sheet: PartSheet,
    part: PartRecord,
    recorder: Recorder,
    thresholds: Mapping[str, float],
    timings: Timings,
) -> tuple[SheetOutcome | None, Fault | None]:
    """The part's fused sheet map: its peaks (for the decision), picture and defect list (set
    on the part record, committed with its verdict). A failure is the part's fault (never a
    pass, never a crash)."""
    try:
        with timings.measure("inference"):
            result = sheet.result()
            peaks = part_peaks(result, list(thresholds))
            placement = sheet.placement()
        with timings.measure("logging"):
            record = recorder.write_sheet_map(
                part, result, thresholds, sheet.camera.source, placement
            )
        check_placement(placement)
        unseen, blind = check_seen(result, sheet.recipe)
    except StationError as exc:
        return None, classify(exc)
    except (ValueError, OSError, np.linalg.LinAlgError) as exc:
        return None, classify(SheetMapError(f"sheet map not built: {exc}"))
    except Exception as exc:  # noqa: BLE001 (a bug: an internal fault, the part rejected, run stops)
        return None, classify(exc)
    return SheetOutcome(peaks, record.defects, unseen, blind, sheet.camera.source), None
