"""Feed the pylon camera emulator with digital-twin shots.

The emulator plays the files of `camera.emulator_images` in alphabetical order, one per
software trigger, rewinding when grabbing restarts; it cannot render anything itself. So a run
of the mixed setup (real drivers against the pylon emulator and the fake UR controller) first
renders the parts with the twin and writes them, named so that alphabetical order is part order
then recipe pose order: `p000000_00_left.png`, `p000000_01_centre.png`, ... The camera, opened
once, then returns part 0's poses, part 1's poses, and so on, as the robot visits them.

`station inspect` also shoots the drift reference card after a part's poses (on the run's first
part, then every `every_parts`), `station capture` never does: the files are written for one
of the two (`use`), and `check_sequence` refuses a run of the other, or of a recipe whose poses
changed since.

Ground truth cannot travel through the emulator, so masks go to a sibling folder
`<folder>-masks/` and a manifest `<folder>.json` maps each played file to its part seed, pose,
mask and defect flag. Nothing but images may stay in the played folder: the emulator turns any
other file into a failed buffer.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from station.errors import StationError
from station.files import atomic_write, writing
from station.paths import resolve
from station.recipe import Recipe, card_pose
from station.twin import CAPTURE_SEED_OFFSET, render_part_shots

# files this module writes, and the board views `calibrate-camera --prepare-emulator` writes
_OURS = re.compile(r"^(p\d{6}_\d{2}_.+|view\d{2,})\.png(\.tmp)?$")


@dataclass(frozen=True)
class EmulatorShot:
    """One file the emulator will play, in play order."""

    image_path: str
    mask_path: str
    part_index: int
    part_seed: int
    pose: str
    defective: bool


def _manifest(folder: Path) -> Path:
    """The manifest beside the played folder: `<folder>.json`."""
    return folder.with_name(folder.name + ".json")


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    tmp.replace(path)


def _clear(folder: Path) -> None:
    """Remove files written by an earlier run; refuse when foreign files would be played."""
    files = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    foreign = [p.name for p in files if not (p.is_file() and _OURS.match(p.name))]
    if foreign:
        raise StationError(
            f"emulator image folder {folder} holds other files ({', '.join(foreign[:5])}); "
            "the emulator would play them too",
            hint="give an empty folder or remove them",
        )
    for p in files:
        p.unlink()


USES = ("inspect", "capture")


def played_poses(recipe: Recipe, use: str, part_index: int) -> list[str]:
    """The poses part `part_index` of a run grabs, in order: the recipe's, then for `inspect`
    the reference card when it is due (station.inspection.reference_shot)."""
    names = [p.name for p in recipe.robot.poses]
    drift = recipe.monitoring.drift
    card = use == "inspect" and drift.enabled and drift.reference.enabled
    if card and part_index % drift.reference.every_parts == 0:
        names.append(card_pose(recipe).name)
    return names


def prepare_twin_images(
    recipe: Recipe,
    count: int,
    folder: str | Path | None = None,
    first_seed: int | None = None,
    defective: bool | None = None,
    use: str = "inspect",
) -> list[EmulatorShot]:
    """Render `count` twin parts and write their shots for the emulator; returns them in order.

    `folder` defaults to the recipe's `camera.emulator_images`; part i uses twin seed
    `first_seed + i` (default: `recipe.twin.seed`, plus `CAPTURE_SEED_OFFSET` for capture);
    `defective` True/False forces defective or good sheets, None draws them at the recipe's
    defect rate; `use` is the command that will play them (`inspect` adds the reference card's
    shots). Earlier files from this function in the folder are replaced. Shots must match the
    camera's width x height, else the emulator would crop them silently.
    """
    if use not in USES:
        raise StationError(f"use must be one of {', '.join(USES)}, not {use!r}")
    if count < 1:
        raise StationError(f"count must be at least 1, not {count}")
    target = folder if folder is not None else getattr(recipe.camera, "emulator_images", None)
    if target is None:
        raise StationError(
            f"recipe {recipe.name} sets no camera.emulator_images",
            hint="set it to the folder the pylon emulator should play",
        )
    out = resolve(target)
    masks = out.with_name(out.name + "-masks")
    with writing(f"emulator image folder {out}"):
        out.mkdir(parents=True, exist_ok=True)
        masks.mkdir(exist_ok=True)
    _clear(out)
    for p in masks.glob("p*_mask.png"):
        p.unlink()

    cam = recipe.camera
    size = (cam.height, cam.width)
    seed0 = first_seed
    if seed0 is None:  # capture frames are never the sheets an inspection plays
        seed0 = recipe.twin.seed + (CAPTURE_SEED_OFFSET if use == "capture" else 0)
    shots: list[EmulatorShot] = []
    for i in range(count):
        seed = seed0 + i
        card = len(played_poses(recipe, use, i)) > len(recipe.robot.poses)
        for j, (pose, image, mask) in enumerate(render_part_shots(recipe, seed, defective, card)):
            if image.shape[:2] != size:
                raise StationError(
                    f"twin shot {pose} is {image.shape[1]}x{image.shape[0]} but the camera is "
                    f"{cam.width}x{cam.height}; the emulator would crop it",
                    hint="render at the recipe's camera.width x camera.height",
                )
            stem = f"p{i:06d}_{j:02d}_{pose}"
            image_path, mask_path = out / f"{stem}.png", masks / f"{stem}_mask.png"
            with writing(image_path):
                _write_png(image_path, image.astype(np.uint8, copy=False))
                _write_png(mask_path, mask.astype(np.uint8, copy=False))
            shots.append(
                EmulatorShot(
                    image_path=str(image_path),
                    mask_path=str(mask_path),
                    part_index=i,
                    part_seed=seed,
                    pose=pose,
                    defective=bool(np.any(mask)),
                )
            )
    manifest = _manifest(out)
    doc = {"recipe": recipe.name, "use": use, "shots": [asdict(s) for s in shots]}
    text = json.dumps(doc, indent=1)
    with writing(manifest):
        atomic_write(manifest, text.encode("utf-8"))
    return shots


def read_manifest(folder: str | Path) -> list[EmulatorShot]:
    """The shots `prepare_twin_images` wrote for `folder`, in play order."""
    out = resolve(folder)
    manifest = _manifest(out)
    if not manifest.is_file():
        raise StationError(
            f"no emulator manifest {manifest}", hint="run prepare_twin_images for this folder"
        )
    data = json.loads(manifest.read_text(encoding="utf-8"))
    return [EmulatorShot(**s) for s in data["shots"]]


def check_sequence(recipe: Recipe, use: str) -> None:
    """StationError when the emulator's files were written for the other command, or for
    other poses than the recipe's: each frame would then reach the wrong pose. Nothing to check
    without the pylon emulator (PYLON_CAMEMU) or a manifest."""
    import os

    folder = getattr(recipe.camera, "emulator_images", None)
    if recipe.camera.driver != "pylon" or not folder or not os.environ.get("PYLON_CAMEMU"):
        return
    out = resolve(folder)
    manifest = _manifest(out)
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no manifest: files that were not rendered here
    made_for = data.get("use", "capture")  # files from before `use` hold no card shots
    first = [s["pose"] for s in data.get("shots", []) if s.get("part_index") == 0]
    want = played_poses(recipe, use, 0)
    fix = f"station sim camera-images -r {recipe.name} --for {use}"
    if made_for != use:
        raise StationError(
            f"the emulator images in {out} were rendered for station {made_for}, not {use}: "
            "each frame would reach the wrong pose",
            hint=f"render them again: {fix}",
        )
    if first and first != want:
        raise StationError(
            f"the emulator images in {out} play the poses {', '.join(first)} per sheet, but "
            f"the recipe visits {', '.join(want)}",
            hint=f"render them again: {fix}",
        )
