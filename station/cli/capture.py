"""`station capture`: drive robot and camera through the recipe's poses and store the shots.

Shots go to the recipe's dataset folder in MVTec-AD layout (`train/good/`, `test/good/`,
`test/defect/`, `ground_truth/defect/<stem>_mask.png`; `unlabelled/` for unlabelled captures),
one file per shot named `p{sequence:06d}_{pose}.png`, plus `meta/p{sequence:06d}.json` with the
poses, camera settings, timestamps, hashes and (simulated) ground truth. Every part is also a
`Part(mode="capture")` row with its `Shot` rows. A part is written completely (files, then the
database row) before the next starts, so an interrupted or failed run keeps what it captured and
a re-run continues the numbering.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from station.errors import LineIOError, StationError
from station.files import writing
from station.paths import resolve
from station.recipe import Recipe

LABELS = ("good", "labelled", "unlabelled")
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


def check_arguments(recipe: Recipe, count: int, label: str) -> None:
    if label not in LABELS:
        raise StationError(f"--label {label!r} is not known",
                           hint=f"use one of {', '.join(LABELS)}")
    if count < 1:
        raise StationError(f"--count {count} must be at least 1")
    if label == "labelled" and recipe.camera_driver != "sim":
        raise StationError(
            "--label labelled needs ground truth, which only the simulated camera gives",
            hint="capture --label unlabelled and label the parts in review, or use backend sim",
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
    from station.hardware.factory import open_devices, uses_twin
    from station.imaging import write_png
    from station.storage.db import open_database
    from station.storage.models import Part, Shot
    from station.twin.world import TwinWorld, derive_seed

    check_arguments(recipe, count, label)
    root = resolve(out) if out is not None else recipe.dataset_dir
    data_root = resolve(recipe.storage.data_dir)
    seed = recipe.twin.seed if seed is None else int(seed)
    if world is None and uses_twin(recipe):
        world = TwinWorld(recipe, seed=seed, defect_rate=0.0 if label == "good" else None)
    staging = root / ".staging"
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run: incomplete part
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StationError(f"cannot create capture folder {root}: {exc}") from None
    db = open_database(recipe.storage.resolved_database_url())
    result = CaptureResult(root)
    t_start = time.perf_counter()
    robot_cfg = recipe.robot
    try:
        with open_devices(recipe, world) as dev:
            for _ in range(count):
                with db.session() as s:
                    seq = max(db.next_sequence(s, recipe.name), existing_next_sequence(root))
                if dev.world is not None:
                    dev.world.queue_sheet(derive_seed(seed, seq),
                                          defective=False if label == "good" else None)
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
                with writing(f"part {seq} under {root}"):
                    _store_part(
                        recipe, db, root, data_root, staging, seq, label, line_id, started,
                        frames, (time.perf_counter() - t0) * 1000, sim_s, twin_info, write_png,
                        Part, Shot, result,
                    )
                if on_part:
                    on_part(seq)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        db.dispose()
        result.seconds = time.perf_counter() - t_start
    return result


def _store_part(recipe, db, root, data_root, staging, seq, label, line_id, started, frames,  # noqa: ANN001
                cycle_ms, sim_s, twin_info, write_png, Part, Shot, result) -> None:  # noqa: ANN001, N803
    """Write the part's files (staged, then moved into place), then its database rows."""
    stage = staging / f"p{seq:06d}"
    stage.mkdir(parents=True, exist_ok=True)
    moves: list[tuple[Path, Path]] = []
    shots_meta = []
    any_defect = False
    for idx, pose, state, frame in frames:
        stem = f"p{seq:06d}_{pose.name}"
        has_mask = frame.mask is not None and label == "labelled"
        is_defect = bool(has_mask and frame.mask.any())
        any_defect |= is_defect
        sub = {"good": "train/good", "unlabelled": "unlabelled"}.get(
            label, "test/defect" if is_defect else "test/good"
        )
        img_final = root / sub / f"{stem}.png"
        img_stage = stage / f"{stem}.png"
        sha = write_png(img_stage, frame.image)
        moves.append((img_stage, img_final))
        mask_final = None
        mask_sha = None
        if is_defect:
            mask_final = root / "ground_truth/defect" / f"{stem}_mask.png"
            mask_stage = stage / f"{stem}_mask.png"
            mask_sha = write_png(mask_stage, frame.mask)
            moves.append((mask_stage, mask_final))
        h, w = frame.image.shape[:2]
        shots_meta.append({
            "pose_index": idx,
            "pose_name": pose.name,
            "pose_commanded": [*pose.position_mm, *pose.rotvec_rad],
            "robot_pose": [round(v, 4) for v in state.tcp_mm_rotvec],
            "image_path": _rel(img_final, data_root),
            "image_sha256": sha,
            "mask_path": _rel(mask_final, data_root) if mask_final else None,
            "mask_sha256": mask_sha,
            "width": w,
            "height": h,
            "camera_settings": frame.camera_settings,
            "captured_at": datetime.fromtimestamp(frame.timestamp_s, UTC).isoformat(),
            "label": "defect" if is_defect else ("good" if label != "unlabelled" else None),
            "defects": frame.defects if label == "labelled" else [],
        })
    ground_truth = {"good": "good", "unlabelled": None}.get(
        label, "defect" if any_defect else "good"
    )
    finished = datetime.now(UTC)
    meta = {
        "recipe": recipe.name,
        "recipe_sha256": recipe.sha256,
        "sequence": seq,
        "line_part_id": line_id,
        "label": label,
        "ground_truth": ground_truth,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "cycle_ms": round(cycle_ms, 1),
        "simulated_cycle_s": round(sim_s, 3) if sim_s is not None else None,
        "twin": twin_info if label == "labelled" else (
            {k: v for k, v in (twin_info or {}).items() if k != "defects"} or None),
        "shots": shots_meta,
    }
    meta_stage = stage / f"p{seq:06d}.json"
    meta_stage.write_text(json.dumps(meta, indent=1), encoding="utf-8")
    moves.append((meta_stage, root / "meta" / f"p{seq:06d}.json"))
    for src, dst in moves:
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    timings: dict[str, Any] = {"cycle": round(cycle_ms, 1)}
    if sim_s is not None:
        timings["simulated_cycle"] = round(sim_s * 1000, 1)
    with db.session() as s:
        part = Part(
            recipe=recipe.name, recipe_sha256=recipe.sha256, sequence=seq, line_part_id=line_id,
            mode="capture", started_at=started, finished_at=finished, ground_truth=ground_truth,
            timings_ms=timings,
        )
        for m in shots_meta:
            part.shots.append(Shot(
                pose_index=m["pose_index"], pose_name=m["pose_name"], image_path=m["image_path"],
                image_sha256=m["image_sha256"], width=m["width"], height=m["height"],
                camera_settings=m["camera_settings"], robot_pose=m["robot_pose"],
                captured_at=datetime.fromisoformat(m["captured_at"]), mask_path=m["mask_path"],
            ))
        s.add(part)
    result.sequences.append(seq)
    result.shots += len(shots_meta)
    result.defect_shots += sum(1 for m in shots_meta if m["label"] == "defect")
    result.defect_parts += int(ground_truth == "defect")
    shutil.rmtree(stage, ignore_errors=True)


def register(app: typer.Typer) -> None:
    @app.command("capture")
    def capture(
        recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name or path."),
        count: int = typer.Option(1, "--count", "-n", help="Number of parts (sheets)."),
        label: str = typer.Option(
            "good", "--label",
            help="good: defect-free sheets for training (train/good); labelled: sheets at the "
            "twin's defect rate with ground-truth masks (test/); unlabelled: no labels.",
        ),
        out: str | None = typer.Option(
            None, "--out", help="Dataset folder (default: data/<recipe>/dataset)."
        ),
        seed: int | None = typer.Option(None, "--seed", help="Twin seed (default: twin.seed)."),
    ) -> None:
        """Move through the recipe's poses for each part and store one shot per pose."""
        from station.cli.app import console, err_console
        from station.cli.progress import make_progress
        from station.recipe import load_recipe

        rec = load_recipe(recipe)
        check_arguments(rec, count, label)
        total = count * len(rec.robot.poses)
        stored: list[int] = []
        bar = make_progress("[bold]capture[/] {task.description}", "shots", err_console)
        with bar as progress:
            task = progress.add_task(f"{rec.name} ({label})", total=total)

            def on_shot(seq: int, pose: str) -> None:
                progress.update(task, advance=1, description=f"{rec.name} p{seq:06d} {pose}")

            try:
                res = run_capture(rec, count, label, out, seed, on_shot=on_shot,
                                  on_part=stored.append)
            except StationError as exc:
                exc.message = (f"{exc.message} ({len(stored)} of {count} parts were captured "
                               "before it and are kept)")
                raise
        console.print(
            f"[green]captured[/] {len(res.sequences)} parts, {res.shots} shots "
            f"({res.defect_shots} defect shots, {res.defect_parts} defect parts) in "
            f"{res.seconds:.1f} s -> {res.root}"
        )
