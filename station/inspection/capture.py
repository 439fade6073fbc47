"""Capture: drive robot and camera through the recipe's poses and store the shots.

Shots go to the recipe's dataset folder in MVTec-AD layout (`train/good/`, `test/good/`,
`test/defect/`, `ground_truth/defect/<stem>_mask.png`; `unlabelled/` for unlabelled captures),
by label: `good` (training), `labelled` (the twin's truth, with masks), `test-good` and
`test-defect` (sheets the operator vouches for, held out for thresholds; no masks),
one file per shot named `p{sequence:06d}_{pose}.png`, plus `meta/p{sequence:06d}.json` with the
poses, camera settings, timestamps, hashes, (simulated) ground truth and, with
sheet.check_placement, where the sheet was found (`placement`, as inspection finds it). Every
part is also a `Part(mode="capture")` row with its `Shot` rows (written by
`station.storage.parts`). A part is written completely (files, then the database row) before
the next starts, so an interrupted or failed run keeps what it captured and a re-run continues
the numbering.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from station.cellcal.store import CameraModel, inspection_camera
from station.devices.factory import open_devices, uses_twin
from station.devices.pylon_emulator import check_sequence
from station.errors import LineIOError, StationError
from station.files import writing
from station.geometry.coverage import checks_placement
from station.geometry.placement import Placement
from station.imaging import saturated_mask, write_png
from station.inspection.sheet import find_placement
from station.paths import resolve
from station.recipe import Recipe
from station.storage.db import Database, open_database
from station.storage.models import Part
from station.storage.parts import PartRecord, ShotRecord, write_part
from station.twin import CAPTURE_SEED_OFFSET
from station.twin.world import TwinWorld, derive_seed

LABELS = ("good", "labelled", "unlabelled", "test-good", "test-defect")
# where a label's shots go, and the part's ground truth; `labelled` follows the twin's masks
FOLDERS = {"good": "train/good", "unlabelled": "unlabelled", "test-good": "test/good",
           "test-defect": "test/defect"}  # fmt: skip
TRUTH = {"good": "good", "unlabelled": None, "test-good": "good", "test-defect": "defect"}
SHEETS = {"good": False, "test-good": False, "test-defect": True}  # the twin's sheet, forced
STEM_RE = re.compile(r"^p(\d{6,})_")
SCAN_DIRS = ("train/good", "test/good", "test/defect", "unlabelled")


@dataclass
class CaptureResult:
    root: Path
    sequences: list[int] = field(default_factory=list)
    shots: int = 0
    defect_shots: int = 0
    defect_parts: int = 0
    seconds: float = 0.0
    clipped_shots: int = 0  # shots with pixels at full scale (not inspected there)
    clipped_max: float = 0.0  # the largest share of a shot's pixels at full scale
    placements: list[Placement] = field(default_factory=list)  # with sheet.check_placement


def existing_next_sequence(root: Path) -> int:
    """1 + the highest part number among the shot files already under `root`."""
    best = 0
    for sub in SCAN_DIRS:
        folder = root / sub
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = STEM_RE.match(p.name)
            if m:
                best = max(best, int(m.group(1)))
    return best + 1


def _rel(path: Path, data_root: Path) -> str:
    """POSIX path relative to the data root (absolute when the file lies outside it)."""
    try:
        return path.resolve().relative_to(data_root.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def check_arguments(recipe: Recipe, count: int, label: str, seed: int | None = None) -> None:
    if label not in LABELS:
        raise StationError(f"--label {label!r} is not known",
                           hint=f"use one of {', '.join(LABELS)}")
    if count < 1:
        raise StationError(f"--count {count} must be at least 1")
    if seed is not None and seed < 0:
        raise StationError(f"--seed {seed} must be 0 or more")
    if label == "labelled" and recipe.camera_driver != "sim":
        raise StationError(
            "--label labelled needs ground truth, which only the simulated camera gives",
            hint="capture sheets you know with --label test-good and --label test-defect, or "
            "use backend sim",
        )


def run_capture(
    recipe: Recipe,
    count: int,
    label: str = "good",
    out: str | Path | None = None,
    seed: int | None = None,
    world: Any = None,
    on_shot: Callable[[int, str], None] | None = None,
    on_part: Callable[[int], None] | None = None,
) -> CaptureResult:
    """Capture `count` parts; returns what was written. Raises StationError on device faults.

    `world`: a TwinWorld to use (tests inject faults through it); made from the recipe when a
    device is simulated and none is given. `on_shot(sequence, pose_name)` after every shot,
    `on_part(sequence)` after every stored part.
    """
    check_arguments(recipe, count, label, seed)
    check_sequence(recipe, "capture")  # an emulated camera plays the frames it was given
    root = resolve(out) if out is not None else recipe.dataset_dir
    data_root = resolve(recipe.storage.data_dir)
    seed = recipe.twin.seed + CAPTURE_SEED_OFFSET if seed is None else int(seed)
    if world is None and uses_twin(recipe):
        forced = SHEETS.get(label)
        world = TwinWorld(recipe, seed=seed, defect_rate=None if forced is None else float(forced))
    staging = root / ".staging"
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run: incomplete part
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StationError(f"cannot create capture folder {root}: {exc}") from None
    db = open_database(recipe.storage.resolved_database_url())
    result = CaptureResult(root)
    store = _PartStore(recipe, db, root, data_root, staging, label,
                       inspection_camera(recipe) if checks_placement(recipe) else None)
    t_start = time.perf_counter()
    try:
        with open_devices(recipe, world) as dev:
            if store.camera is not None:  # its placement check: the calibrated camera's
                store.camera.refuse_other_camera(dev.camera.settings().get("serial"))
            for _ in range(count):
                # the number is the database's before anything is captured: another writer
                # (an offline inspection) cannot take it between the files and the rows
                key = uuid.uuid4().hex
                row = db.create_part(recipe.name, existing_next_sequence(root), part_key=key,
                                     mode="capture", recipe_sha256=recipe.sha256)
                seq = row.sequence
                try:
                    if dev.world is not None:
                        dev.world.queue_sheet(derive_seed(seed, seq), defective=SHEETS.get(label))
                    part = _capture_one(dev, recipe, seq, row.id, key, on_shot)
                    with writing(f"part {seq} under {root}"):
                        store.store(part, result)
                except BaseException:
                    _drop_if_empty(db, row.id)
                    raise
                if on_part:
                    on_part(seq)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        db.dispose()
        result.seconds = time.perf_counter() - t_start
    return result


def _capture_one(
    dev: Any, recipe: Recipe, seq: int, db_id: int, key: str,
    on_shot: Callable[[int, str], None] | None,
) -> _Captured:  # fmt: skip
    """Wait for a sheet, shoot it from every pose, release it."""
    robot_cfg = recipe.robot
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    clock0 = dev.world.clock_s if dev.world is not None else None
    line_id = dev.line.wait_for_part(recipe.line_io.part_timeout_s)
    if line_id is None:
        raise LineIOError(
            f"no sheet arrived within {recipe.line_io.part_timeout_s:g} s",
            hint="check the conveyor and the part-present input",
        )
    dev.robot.move_to(robot_cfg.home)
    frames = []
    for idx, pose in enumerate(robot_cfg.poses):
        state = dev.robot.move_to(pose)
        frame = dev.camera.grab()
        frames.append((idx, pose, state, frame))
        if on_shot:
            on_shot(seq, pose.name)
    twin_info = dev.world.describe() if dev.world is not None else None
    dev.robot.move_to(robot_cfg.home)
    dev.line.release_part()
    sim_s = (dev.world.clock_s - clock0) if dev.world is not None else None
    cycle_ms = (time.perf_counter() - t0) * 1000
    return _Captured(seq, db_id, key, line_id, started, frames, cycle_ms, sim_s, twin_info)


def _drop_if_empty(db: Database, part_id: int) -> None:
    """The Part row that held a capture's number, deleted when no shot reached it (the
    capture stopped first); kept otherwise. Best effort: the database may be the failure."""
    with contextlib.suppress(StationError), db.session() as s:
        row = s.get(Part, part_id)
        if row is not None and not row.shots:
            s.delete(row)


@dataclass
class _Captured:
    """One part as the cell gave it: (pose index, pose, robot state, frame) per shot."""

    seq: int
    db_id: int  # its Part row, made when the number was taken
    key: str
    line_id: str | None
    started: datetime
    frames: list[tuple[int, Any, Any, Any]]
    cycle_ms: float
    sim_s: float | None
    twin_info: dict[str, Any] | None


@dataclass
class _PartStore:
    """Writes captured parts: files staged then moved into place, then the database rows."""

    recipe: Recipe
    db: Database
    root: Path
    data_root: Path
    staging: Path
    label: str
    camera: CameraModel | None  # the placement's (None: the recipe does not check placement)

    def store(self, part: _Captured, result: CaptureResult) -> None:
        stage = self.staging / f"p{part.seq:06d}"
        stage.mkdir(parents=True, exist_ok=True)
        moves: list[tuple[Path, Path]] = []
        shots_meta = [self._shot(part.seq, stage, moves, *f) for f in part.frames]
        any_defect = any(m["label"] == "defect" for m in shots_meta)
        ground_truth = TRUTH.get(self.label, "defect" if any_defect else "good")
        finished = datetime.now(UTC)
        meta = self._meta(part, ground_truth, finished, shots_meta)
        if self.camera is not None:  # where the line put the sheet, as inspection finds it
            placed = self._placement(part)
            meta["placement"] = placed.as_dict()
            result.placements.append(placed)
        meta_stage = stage / f"p{part.seq:06d}.json"
        meta_stage.write_text(json.dumps(meta, indent=1), encoding="utf-8")
        moves.append((meta_stage, self.root / "meta" / f"p{part.seq:06d}.json"))
        for src, dst in moves:
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
        timings: dict[str, Any] = {"cycle": round(part.cycle_ms, 1)}
        if part.sim_s is not None:
            timings["simulated_cycle"] = round(part.sim_s * 1000, 1)
        record = PartRecord(
            recipe=self.recipe.name, recipe_sha256=self.recipe.sha256, mode="capture",
            line_part_id=part.line_id, key=part.key, started_at=part.started,
            finished_at=finished, ground_truth=ground_truth, timings_ms=timings,
            sequence=part.seq, db_id=part.db_id,
            shots=[_shot_record(m) for m in shots_meta],
        )  # fmt: skip
        write_part(self.db, record)
        result.sequences.append(part.seq)
        result.shots += len(shots_meta)
        result.defect_shots += sum(1 for m in shots_meta if m["label"] == "defect")
        result.defect_parts += int(ground_truth == "defect")
        for *_, frame in part.frames:
            clipped = saturated_mask(frame.image, grow_px=0)
            if clipped is not None:
                result.clipped_shots += 1
                result.clipped_max = max(result.clipped_max, float(clipped.mean()))
        shutil.rmtree(stage, ignore_errors=True)

    def _placement(self, part: _Captured) -> Placement:
        """The sheet as found in the part's shots; a failure is said, never loses the part."""
        assert self.camera is not None
        try:
            return find_placement(self.recipe, self.camera, [
                (pose.name, state.tcp_mm_rotvec, frame.image)
                for _, pose, state, frame in part.frames])
        except Exception as exc:  # noqa: BLE001 (a report; the part is stored whatever it says)
            msg = exc.message if isinstance(exc, StationError) else f"{type(exc).__name__}: {exc}"
            return Placement(f"not measured: {msg}")

    def _shot(
        self, seq: int, stage: Path, moves: list[tuple[Path, Path]],
        idx: int, pose: Any, state: Any, frame: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Stage one shot's files (image, mask); its entry in the part's meta file."""
        stem = f"p{seq:06d}_{pose.name}"
        label = self.label
        has_mask = frame.mask is not None and label == "labelled"
        is_defect = bool(has_mask and frame.mask.any())
        sub = FOLDERS.get(label, "test/defect" if is_defect else "test/good")
        img_final = self.root / sub / f"{stem}.png"
        img_stage = stage / f"{stem}.png"
        sha = write_png(img_stage, frame.image)
        moves.append((img_stage, img_final))
        mask_final = None
        mask_sha = None
        if is_defect:
            mask_final = self.root / "ground_truth/defect" / f"{stem}_mask.png"
            mask_stage = stage / f"{stem}_mask.png"
            mask_sha = write_png(mask_stage, frame.mask)
            moves.append((mask_stage, mask_final))
        h, w = frame.image.shape[:2]
        return {
            "pose_index": idx,
            "pose_name": pose.name,
            "pose_commanded": [*pose.position_mm, *pose.rotvec_rad],
            "robot_pose": [round(v, 4) for v in state.tcp_mm_rotvec],
            "image_path": _rel(img_final, self.data_root),
            "image_sha256": sha,
            "mask_path": _rel(mask_final, self.data_root) if mask_final else None,
            "mask_sha256": mask_sha,
            "width": w,
            "height": h,
            "camera_settings": frame.camera_settings,
            "captured_at": datetime.fromtimestamp(frame.timestamp_s, UTC).isoformat(),
            "label": "defect" if is_defect or label == "test-defect" else (
                "good" if label != "unlabelled" else None),
            "defects": frame.defects if label == "labelled" else [],
        }

    def _meta(
        self, part: _Captured, ground_truth: str | None, finished: datetime,
        shots_meta: list[dict[str, Any]],
    ) -> dict[str, Any]:  # fmt: skip
        twin_info = part.twin_info
        return {
            "recipe": self.recipe.name,
            "recipe_sha256": self.recipe.sha256,
            "sequence": part.seq,
            "line_part_id": part.line_id,
            "label": self.label,
            "ground_truth": ground_truth,
            "started_at": part.started.isoformat(),
            "finished_at": finished.isoformat(),
            "cycle_ms": round(part.cycle_ms, 1),
            "simulated_cycle_s": round(part.sim_s, 3) if part.sim_s is not None else None,
            "twin": twin_info if self.label == "labelled" else (
                {k: v for k, v in (twin_info or {}).items()
                 if k not in ("defects", "truth")} or None),
            "shots": shots_meta,
        }  # fmt: skip


def _shot_record(m: dict[str, Any]) -> ShotRecord:
    """The Shot row of one shot's meta entry."""
    return ShotRecord(
        pose_index=m["pose_index"], pose_name=m["pose_name"], image_path=m["image_path"],
        image_sha256=m["image_sha256"], width=m["width"], height=m["height"],
        camera_settings=m["camera_settings"], robot_pose=m["robot_pose"],
        captured_at=datetime.fromisoformat(m["captured_at"]), mask_path=m["mask_path"],
    )  # fmt: skip
