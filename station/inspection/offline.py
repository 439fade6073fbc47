"""Offline inspection input: stored image files grouped into parts, and read as a part's shots.

`group_offline` applies the naming rule (one `p<sequence>_<pose>` image per recipe pose);
`offline_shots` yields a part's images as the cycle's acquired shots, checked against the
recipe's camera. `Inspector.offline_part` / `run_offline` take them through the cycle.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from station.errors import StationError
from station.imaging import IMAGE_SUFFIXES, read_image
from station.inspection.results import Acquired, Timings
from station.recipe import Recipe


@dataclass
class OfflinePart:
    """Stored images of one part: (pose name, path) in pose order."""

    key: str
    shots: list[tuple[str, Path]]
    ground_truth: str | None = None
    missing: list[str] = field(default_factory=list)  # recipe poses without an image
    problem: str | None = None  # why these files are no part: inspected as a fault, unread


_PART_STEM = re.compile(r"^(p\d+)_(.+)$")


def group_offline(paths: Sequence[Path], recipe: Recipe) -> list[OfflinePart]:
    """Group image files into parts. The rule: a part is one image of each recipe pose, named
    `p<sequence>_<pose>` (the capture layout), in one folder; in the capture layout a sheet's
    shots are filed by label (`test/good`, `test/defect`), so those two folders count as one
    (the sheet is defective if any shot is). On a one-pose recipe, an image of any other name is
    a part of its own, at that pose. Anything else becomes a part that is inspected as a fault:
    a part lacking a pose (`missing`; the poses it has are still scored and stored), and
    (`problem`, nothing read) an image of another name on a multi-pose recipe, a pose the
    recipe does not have, or two images of one pose."""
    files = _image_files(paths)
    poses = [pose.name for pose in recipe.robot.poses]
    order = {name: i for i, name in enumerate(poses)}
    rule = f"name a part's images p<sequence>_<pose>.png, one per pose: {', '.join(poses)}"
    groups: dict[tuple[Path, str], OfflinePart] = {}
    out: list[OfflinePart] = []
    for f in files:
        gt = f.parent.name if f.parent.name in ("good", "defect") else None
        m = _PART_STEM.match(f.stem)
        if m is None:
            part = OfflinePart(key=str(f), shots=[(poses[0], f)], ground_truth=gt)
            if len(poses) > 1:  # which pose is it? never guess, never pass a sheet seen in part
                part.shots, part.missing = [], poses
                part.problem = (
                    f"image {f.name} is not named for a pose, and recipe {recipe.name} shoots "
                    f"{len(poses)}: missing {', '.join(poses)} ({rule})"
                )
            out.append(part)
            continue
        folder = f.parent.parent if gt else f.parent
        gkey = (folder, m.group(1))
        if gkey not in groups:
            groups[gkey] = OfflinePart(key=f"{folder}/{m.group(1)}", shots=[], ground_truth=gt)
            out.append(groups[gkey])
        part = groups[gkey]
        if gt == "defect":
            part.ground_truth = "defect"
        part.shots.append((m.group(2), f))
    for part in groups.values():
        names = [pose for pose, _ in part.shots]
        part.missing = [pose for pose in poses if pose not in names]
        unknown = sorted({n for n in names if n not in order})
        twice = sorted({n for n in names if names.count(n) > 1})
        if unknown:
            part.problem = (
                f"part {part.key} has images of pose(s) {', '.join(unknown)} that recipe "
                f"{recipe.name} does not have ({rule})"
            )
        elif twice:
            part.problem = f"part {part.key} has more than one image of pose(s) {', '.join(twice)}"
    for part in out:
        part.shots.sort(key=lambda s: (order.get(s[0], len(order)), s[0]))
    return out


def _image_files(paths: Sequence[Path]) -> list[Path]:
    """The image files given, those in given folders (and below) found by suffix; masks
    (`*_mask`) skipped. None at all is a StationError naming the folders searched."""
    files: list[Path] = []
    folders: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            folders.append(p)
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            files.append(p)
        else:
            raise StationError(f"image {p} does not exist", hint="check the path")
    files = [f for f in files if not f.stem.endswith("_mask")]
    if not files and folders:
        where = f"folder {folders[0]} holds" if len(folders) == 1 else (
            f"folders {', '.join(str(f) for f in folders)} hold"
        )
        suffixes = ", ".join(IMAGE_SUFFIXES[:-1]) + f" or {IMAGE_SUFFIXES[-1]}"
        raise StationError(
            f"{where} no images (no {suffixes} file there or in sub-folders, *_mask files aside)",
            hint="pass the folder that holds the part images, or the image files",
        )
    if not files:
        raise StationError("no image files given", hint="pass image files or folders of them")
    return files


def offline_shots(group: OfflinePart, recipe: Recipe) -> Callable[[Timings], Iterator[Acquired]]:
    """The part's stored images as acquired shots (reading a file counts as exposure).

    A part with a problem, an image of another size than the recipe's camera, or a missing
    pose raises, so that the cycle ends the part as a fault (never a pass for a sheet not seen
    whole)."""
    cam = recipe.camera

    def shots(timings: Timings) -> Iterator[Acquired]:
        if group.problem:
            raise StationError(group.problem)
        for k, (pose, path) in enumerate(group.shots):
            with timings.measure("exposure"):
                image = read_image(path, cam.pixel_format)  # the recipe's format only
            if image.shape[:2] != (cam.height, cam.width):  # thresholds hold for this camera
                raise StationError(
                    f"image {path} is {image.shape[1]} x {image.shape[0]} px; recipe "
                    f"{recipe.name}'s camera takes {cam.width} x {cam.height}"
                )
            yield Acquired(k, pose, image, {"source": str(path)})
        if group.missing:  # never pass a sheet that was not seen whole
            raise StationError(
                f"part {group.key} has no image of pose(s) {', '.join(group.missing)} "
                "(a part is one p<sequence>_<pose>.png per recipe pose)"
            )

    return shots
