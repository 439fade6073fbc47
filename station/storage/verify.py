"""The archive check behind `station db verify`: do the database and the disk still agree?

For one recipe it reads every Part row with its shots, detections and sheet map, and checks that
each file a row names is on disk (and, unless asked not to, that each shot's bytes still match
the sha256 stored with it), and that each model that decided a part still has its row and its
unchanged file. It also reports what lies beside the rows: part records held in the
journal (the next start writes them), records the database refused (`journal/refused/`), parts
left `pending` by a crash, and files in the images folder that no row and no held record names
(what a crash cut off: a heatmap written before its rows, a temporary file).

A run holding the recipe's live lock is inspecting: its undecided parts are skipped, and only the
checked parts' folders are searched for unnamed files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from station.decision import Verdict
from station.files import file_sha256
from station.paths import resolve
from station.recipe import Recipe
from station.storage.db import Database
from station.storage.journal import journal_folder
from station.storage.lock import held_elsewhere
from station.storage.models import ModelVersion, Part, Shot
from station.storage.parts import PartRecord, part_folder

Progress = Callable[[int, int], None]  # (parts done, parts in all)


@dataclass
class ArchiveReport:
    recipe: str
    parts: int = 0
    shots: int = 0
    files: int = 0  # files named by rows and found
    hashed: int = 0  # shot files whose sha256 was compared
    live: bool = False  # a run held the live lock: its undecided parts were skipped
    missing: list[str] = field(default_factory=list)  # "<path> (part N, what)"
    damaged: list[str] = field(default_factory=list)  # sha256 differs or unreadable
    models: list[str] = field(default_factory=list)  # a deciding model without its file
    models_checked: int = 0
    refused: list[str] = field(default_factory=list)  # journal/refused/ files
    held: list[str] = field(default_factory=list)  # journal files not yet in the database
    pending: list[int] = field(default_factory=list)  # sequences left undecided by a crash
    unnamed: list[str] = field(default_factory=list)  # files under images/ that nothing names

    @property
    def lost(self) -> bool:
        """Something decided or captured is not whole in the database and on disk."""
        return bool(self.missing or self.damaged or self.refused or self.models)


def _named_files(part: Part) -> Iterator[tuple[str, str, Shot | None]]:
    """(relative path, what it is, its shot when it carries a sha256) of every file the part's
    rows name."""
    if part.sheet_map_path:
        yield part.sheet_map_path, "sheet map", None
    for shot in part.shots:
        yield shot.image_path, f"shot {shot.pose_name}", shot
        if shot.mask_path:
            yield shot.mask_path, f"mask {shot.pose_name}", None
        for det in shot.detections:
            for path, kind in ((det.heatmap_path, "heatmap"), (det.raw_map_path, "raw map")):
                if path:
                    yield path, f"{kind} {shot.pose_name}/{det.detector}", None


def _record_files(record: PartRecord) -> Iterator[str]:
    if record.sheet_map is not None:
        yield record.sheet_map.png_path
    for shot in record.shots:
        yield from (p for p in (shot.image_path, shot.mask_path) if p)
        for det in shot.detections:
            yield from (p for p in (det.heatmap_path, det.raw_map_path) if p)


class _Check:
    def __init__(self, recipe: Recipe, hashes: bool) -> None:
        self.root = resolve(recipe.storage.data_dir)
        self.hashes = hashes
        self.report = ArchiveReport(recipe.name)
        self.named: set[Path] = set()
        self.skip: set[Path] = set()  # folders of parts a live run is still inspecting
        self.used: dict[tuple[str, str], list[int]] = {}  # (detector, version) -> sequences
        self.folders: set[Path] = set()  # the checked parts' folders

    def part(self, row: Part) -> None:
        self.report.parts += 1
        for detector, version in (row.model_versions or {}).items():
            self.used.setdefault((detector, str(version)), []).append(row.sequence)
        self.report.shots += len(row.shots)
        for rel, what, shot in _named_files(row):
            path = self.root / rel
            self.named.add(path)
            where = f"{rel} (part {row.sequence}, {what})"
            if not path.is_file():
                self.report.missing.append(where)
                continue
            self.report.files += 1
            if shot is None or not self.hashes:
                continue
            self.report.hashed += 1
            try:
                if file_sha256(path) != shot.image_sha256:
                    self.report.damaged.append(f"{where}: sha256 differs from its row's")
            except OSError as exc:
                self.report.damaged.append(f"{where}: unreadable ({exc.strerror or exc})")

    def models(self, rows: dict[tuple[str, str], ModelVersion]) -> None:
        """Each model that decided a part: its row, its file, its sha256."""
        for (detector, version), seqs in sorted(self.used.items()):
            decided = f"decided {len(seqs)} part(s), from part {min(seqs)}"
            what = f"model {detector} {version} ({decided})"
            row = rows.get((detector, version))
            if row is None:
                self.report.models.append(f"{what}: no model_versions row")
                continue
            path = self.root / row.artifact_path
            self.report.models_checked += 1
            if not path.is_file():
                self.report.models.append(f"{what}: file {path} missing")
            elif self.hashes and file_sha256(path) != row.artifact_sha256:
                self.report.models.append(f"{what}: file {path} changed (sha256)")

    def journal(self, folder: Path) -> None:
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                record = PartRecord.from_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, TypeError, KeyError, AttributeError):
                self.report.held.append(f"{path.name} (not readable as a part record)")
                continue
            self.report.held.append(f"{path.name} (part {record.label}, {record.verdict.value})")
            self.named.update(self.root / rel for rel in _record_files(record))
        refused = folder / "refused"
        if refused.is_dir():
            self.report.refused = [str(p) for p in sorted(refused.glob("*.json"))]

    def unnamed(self, folders: list[Path]) -> None:
        found = (p for f in folders if f.is_dir() for p in f.rglob("*") if p.is_file())
        for path in sorted(found):
            if path not in self.named and path.parent not in self.skip:
                self.report.unnamed.append(path.relative_to(self.root).as_posix())


def verify_archive(
    db: Database,
    recipe: Recipe,
    hashes: bool = True,
    progress: Progress | None = None,
    since: datetime | None = None,
) -> ArchiveReport:
    """Check the recipe's rows against its files (see the module docstring); with `since`,
    only the parts started since then, and only their folders for unnamed files.
    StorageError if the database cannot be read."""
    check = _Check(recipe, hashes)
    live = held_elsewhere(recipe.data_dir / "live.lock")
    check.report.live = live
    with db.reading() as s:  # hashing takes minutes: never hold the write lock meanwhile
        query = select(Part.id).where(Part.recipe == recipe.name)
        if since is not None:
            query = query.where(Part.started_at >= since)
        ids = s.scalars(query.order_by(Part.sequence)).all()
        for start in range(0, len(ids), 200):
            rows = s.scalars(
                select(Part)
                .where(Part.id.in_(ids[start : start + 200]))
                .options(selectinload(Part.shots).selectinload(Shot.detections))
                .order_by(Part.sequence)
            ).all()
            for row in rows:
                undecided = row.verdict is Verdict.PENDING and row.mode in ("live", "offline")
                if undecided and (live or _run_alive(recipe, row.run_id)):
                    check.skip.add(part_folder(recipe, row.sequence))
                    continue
                if undecided:
                    check.report.pending.append(row.sequence)
                check.part(row)
                check.folders.add(part_folder(recipe, row.sequence))
            if progress is not None:
                progress(min(start + 200, len(ids)), len(ids))
            s.expunge_all()
        models = s.scalars(select(ModelVersion).where(ModelVersion.recipe == recipe.name)).all()
        check.models({(m.detector, m.version): m for m in models})
    check.journal(journal_folder(recipe))
    if since is None and not live:
        check.unnamed([recipe.images_dir])
    else:  # a live run adds part folders while this runs: only the checked parts' folders
        check.unnamed(sorted(check.folders))
    return check.report


def _run_alive(recipe: Recipe, run_id: str | None) -> bool:
    return bool(run_id) and held_elsewhere(recipe.data_dir / "runs" / f"{run_id}.lock")
