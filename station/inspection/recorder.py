"""Everything the inspection cycle writes: shots, heatmaps and database rows, crash-safe.

Order of writes for one part (so nothing captured or decided is ever lost):

1. `open_part`: the Part row (verdict `pending`) is committed before the first shot.
2. `add_shot`: the shot PNG is written atomically (temporary file, fsync, rename) and its Shot
   row committed, before the shot goes to the detectors.
3. `write_detection`: heatmap PNGs (and raw maps when the recipe asks) are written to disk.
4. `write_sheet_map`: the part's sheet map picture (`sheet_map.png` in the part's folder).
5. `finish_part`: Detection rows, the sheet map (its columns, the shots' footprints, the
   defect regions) and the verdict are committed in one transaction.

The records (`PartRecord`, `ShotRecord`, `DetectionRecord`) and the row writes live in
`station.storage.parts`; this module decides when to write, where files go, and what to do
when the database refuses.

When the database refuses a write (locked, server gone, disk full), the part's full record is
kept in memory and in a fsynced journal file (`<data>/<recipe>/journal/<key>.json`, or
`storage.journal_dir`), whose disk space is reserved ahead (station.storage.journal), and
written to the database as soon as it answers again (before the next part, at shutdown, or at
the next start). A record neither can take raises NowhereToStore (the line stops for the
operator). Lock waits on the database are bounded per part by `line_io.part_timeout_s`.

`recover()` at start-up takes the run lock (one live run per recipe and cell), replays the
journal into the rows the records were made for (run id, record key, sequence and recipe
digest must match; anything else goes to `journal/refused/`), then marks parts still `pending`
as `interrupted` and adds Shot rows for shot files that reached the disk but not the database.

Paths in the database are POSIX paths relative to the data root, e.g.
`glassfiber/images/000123/centre.png`; a part's files share the folder of its sequence number:
`<pose>.png` (shot), `<pose>.mask.png` (twin ground truth), `<pose>.<detector>.heat.png`,
`<pose>.<detector>.raw.npy`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from station.errors import InUse, NowhereToStore, StorageError
from station.geometry.placement import Placement
from station.geometry.sheet_map import SheetMap
from station.geometry.sheet_map import render as render_sheet
from station.paths import resolve
from station.recipe import Recipe
from station.storage.db import Database
from station.storage.heatmaps import (
    encode_heatmap,
    encode_png,
    encode_raw_map,
    write_atomic,
)
from station.storage.journal import Journal, journal_folder
from station.storage.lock import RunLock, held_elsewhere
from station.storage.models import Part, Shot, Verdict
from station.storage.parts import (
    DetectionRecord,
    PartRecord,
    RecordRefused,
    SheetMapRecord,
    ShotRecord,
    now,
    part_folder,
    shot_columns,
    write_part,
)

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    journal_replayed: int = 0
    interrupted: list[int] = field(default_factory=list)  # sequences marked interrupted
    unconfirmed: list[int] = field(default_factory=list)  # passes the line may not have had
    shots_added: int = 0
    set_aside: int = 0  # held records the database refuses for good, moved to journal/refused
    refused: list[str] = field(default_factory=list)  # one line per journal file moved aside


class Recorder:
    """Writes one recipe's parts to its data folder and database (see the module docstring)."""

    def __init__(self, db: Database, recipe: Recipe) -> None:
        self.db = db
        self.recipe = recipe
        self.data_root = resolve(recipe.storage.data_dir)
        self.journal_dir = journal_folder(recipe)
        self.journal = Journal(self.journal_dir, int(recipe.storage.journal_reserve_mb * 2**20))
        self.run_id = uuid.uuid4().hex  # kept in every record and Part row of this run
        # held while this run has parts: another run's start leaves them alone (recover)
        self.runs_dir = recipe.data_dir / "runs"
        self.run_lock = RunLock(self.runs_dir / f"{self.run_id}.lock", f"run {self.run_id}")
        self.backlog: dict[str, PartRecord] = {}  # key -> parts the database has not taken yet
        self.journaled: set[str] = set()  # keys of backlog parts with a durable journal copy
        self.set_aside: list[str] = []  # keys of records moved to journal/refused (see flush)
        # total lock wait on the database per part (reset when a part opens)
        self.db_budget_s = recipe.line_io.part_timeout_s
        self._db_left = self.db_budget_s
        self.locks = [RunLock(recipe.data_dir / "live.lock", f"recipe {recipe.name}")]
        if recipe.robot_driver != "sim":  # a twin is per process; a real cell is shared
            host = recipe.robot.host
            self.locks.append(RunLock(self.data_root / f"cell-{host}.lock", f"cell {host}"))

    def hold_lock(self) -> None:
        """Take this recipe's (and real cell's) run lock; InUse if another run holds it."""
        for i, lock in enumerate(self.locks):
            try:
                lock.acquire()
            except BaseException:
                for taken in self.locks[:i]:
                    taken.release()
                raise

    def release_lock(self) -> None:
        for lock in self.locks:
            lock.release()

    def end_run(self) -> None:
        """This run has no part in progress any more: a start may mark its pending parts."""
        self.run_lock.release()
        self.run_lock.path.unlink(missing_ok=True)

    # -- paths ---------------------------------------------------------------------------
    def rel(self, path: Path) -> str:
        return path.relative_to(self.data_root).as_posix()

    def abs(self, rel: str) -> Path:
        return self.data_root / rel

    def part_folder(self, part: PartRecord) -> Path:
        if part.sequence is None:
            raise StorageError("internal: the part has no sequence number yet")
        return part_folder(self.recipe, part.sequence)

    # -- the part's life -----------------------------------------------------------------
    def new_part(self, mode: str, line_part_id: str | None = None) -> PartRecord:
        """A new part; an id longer than its column (an offline part's path) keeps its end."""
        room = Part.__table__.c.line_part_id.type.length
        if line_part_id is not None and len(line_part_id) > room:
            line_part_id = "..." + line_part_id[len(line_part_id) - room + 3 :]
        return PartRecord(
            recipe=self.recipe.name,
            recipe_sha256=self.recipe.sha256,
            mode=mode,
            line_part_id=line_part_id,
            run_id=self.run_id,
        )

    def open_part(self, part: PartRecord) -> None:
        """Commit the pending Part row (and its sequence number). StorageError if refused."""
        self._db_left = self.db_budget_s
        with contextlib.suppress(InUse):  # best effort: without it, as before
            self.run_lock.acquire()
        self.flush_backlog()
        self._sync(part)

    def add_shot(
        self,
        part: PartRecord,
        pose_index: int,
        pose_name: str,
        image: np.ndarray,
        *,
        camera_settings: dict[str, Any] | None = None,
        robot_pose: list[float] | None = None,
        mask: np.ndarray | None = None,
        captured_at: datetime | None = None,
    ) -> ShotRecord:
        """Write the shot (and twin mask) to disk, then commit its Shot row."""
        folder = self.part_folder(part)
        path = folder / f"{pose_name}.png"
        sha = write_atomic(path, encode_png(image))
        mask_rel = None
        if mask is not None:
            mask_path = folder / f"{pose_name}.mask.png"
            write_atomic(mask_path, encode_png(mask))
            mask_rel = self.rel(mask_path)
        shot = ShotRecord(
            pose_index=pose_index,
            pose_name=pose_name,
            image_path=self.rel(path),
            image_sha256=sha,
            width=int(image.shape[1]),
            height=int(image.shape[0]),
            camera_settings=dict(camera_settings or {}),
            robot_pose=[float(v) for v in (robot_pose or [])],
            captured_at=captured_at or now(),
            mask_path=mask_rel,
        )
        part.shots.append(shot)
        self._sync(part, with_detections=False)
        return shot

    def write_detection(
        self,
        part: PartRecord,
        shot: ShotRecord,
        *,
        detector: str,
        model_version: str,
        score: float,
        threshold: float,
        amap: np.ndarray,
        latency_ms: float,
        store_raw: bool = False,
        crop: tuple[int, int, int, int] | None = None,
    ) -> DetectionRecord:
        """Write the heatmap (and raw map) files of one detector on one shot; no database."""
        folder = self.part_folder(part)
        heat = folder / f"{shot.pose_name}.{detector}.heat.png"
        write_atomic(heat, encode_heatmap(amap, threshold, (shot.width, shot.height), crop))
        raw_rel = None
        if store_raw:
            raw = folder / f"{shot.pose_name}.{detector}.raw.npy"
            write_atomic(raw, encode_raw_map(amap))
            raw_rel = self.rel(raw)
        return DetectionRecord(
            detector=detector,
            model_version=model_version,
            score=float(score),
            threshold=float(threshold),
            normalized_score=float(score) / float(threshold),
            heatmap_path=self.rel(heat),
            raw_map_path=raw_rel,
            latency_ms=float(latency_ms),
        )

    def write_sheet_map(
        self,
        part: PartRecord,
        sheet: SheetMap,
        thresholds: Mapping[str, float],
        camera_source: str,
        placement: Placement | None = None,
    ) -> SheetMapRecord:
        """Write the part's sheet map picture (fused maps / thresholds, max over detectors;
        unseen cells black, cells seen only clipped grey) and set `part.sheet_map`, which
        `finish_part` commits with the verdict (and the journal keeps with the part). No
        database here."""
        path = self.part_folder(part) / "sheet_map.png"
        picture = render_sheet(sheet.combined(thresholds), sheet.blind_cells())
        write_atomic(path, encode_png(picture[..., ::-1]))
        part.sheet_map = SheetMapRecord(
            png_path=self.rel(path),
            extent_mm=[float(v) for v in sheet.grid.extent_mm],
            mm_per_px=float(sheet.grid.mm_per_px),
            fusion=sheet.fusion,
            camera_source=camera_source,
            region_mm=[float(v) for v in sheet.region_mm],
            footprints={
                name: [[float(x), float(y)] for x, y in corners]
                for name, corners in sheet.footprints.items()
                if np.isfinite(corners).all()
            },
            defects=sheet.defects(thresholds),
            placement=None if placement is None else placement.as_dict(),
        )
        return part.sheet_map

    def finish_part(self, part: PartRecord) -> None:
        """Commit detections and verdict in one transaction; StorageError if refused.

        On refusal the caller settles the verdict (a refused record is a fault) and hands
        the part to `keep`, which holds it until the database takes it.
        """
        if part.finished_at is None:
            part.finished_at = now()
        self._sync(part)
        self._drop_journal(part)
        self.backlog.pop(part.key, None)

    def keep(self, part: PartRecord, why: str) -> None:
        """Hold a part the database refused: in memory and in the journal (fsynced).

        NowhereToStore when no journal copy of it could be written: its decision is then only
        in this process (and written if the database or the journal takes it later).
        """
        self.backlog[part.key] = part
        try:
            self.journal.write(part.key, part.to_json().encode())
        except StorageError as exc:
            if part.key in self.journaled:  # an older copy (same verdict) is on disk
                log.error("part %s: journal copy not refreshed (%s)", part.key, exc.message)
                return
            raise NowhereToStore(
                f"part {part.label} ({part.verdict.value}) is stored nowhere: "
                f"{why or 'the database refused it'}; and {exc.message}"
            ) from None
        self.journaled.add(part.key)

    def rejournal(self) -> None:
        """Try again to write journal copies of held parts that have none."""
        for key, part in list(self.backlog.items()):
            if key not in self.journaled:
                with contextlib.suppress(StorageError):
                    self.keep(part, "")

    def flush_backlog(self) -> int:
        """Write held parts to the database; returns how many are left.

        Raises StorageError while the database is unavailable. A record it refuses for good
        is set aside (journal/refused/) so that one bad record never blocks the next parts.
        """
        had = bool(self.backlog)
        for key, part in list(self.backlog.items()):
            try:
                self._sync(part)
            except RecordRefused as exc:
                self._set_aside(part, exc)
            else:
                self._drop_journal(part)
            del self.backlog[key]
            self.journaled.discard(key)
        if had and not self.backlog:
            self.journal.top_up()  # the reserve was maybe given to the journal
        return len(self.backlog)

    def flush_and_report(self, told: int) -> tuple[list[tuple[str, str]], int]:
        """`flush_backlog`, in words for the operator: (text, level) messages, and how many
        set-aside records are now reported (`told`: how many were before)."""
        out: list[tuple[str, str]] = []
        if self.backlog:
            before = len(self.set_aside)
            try:
                self.flush_backlog()
            except StorageError as exc:
                self.rejournal()  # the disk may take them now
                lost = sorted(p.label for k, p in self.backlog.items() if k not in self.journaled)
                held = len(self.backlog) - len(lost)
                where = self.journal_dir
                text = f"{held} part record(s) held in {where} ({exc}); "
                out.append((text + "they are written at the next start", "warning"))
                if lost:
                    text = (
                        f"{len(lost)} part record(s) are in no journal and no database "
                        f"(parts {', '.join(lost)}): free space on {where}'s disk while the "
                        "station runs, or they are lost when it stops"
                    )
                    out.append((text, "error"))
            else:
                if len(self.set_aside) == before:
                    out.append(("held part records written to the database", "info"))
        # Records set aside here or when a part was opened (the recorder flushes then too).
        refused = self.set_aside[told:]
        if refused:
            text = (
                f"the database refused {len(refused)} held part record(s) for good "
                f"({', '.join(refused)}); kept in {self.journal_dir / 'refused'}"
            )
            out.append((text, "error"))
        return out, len(self.set_aside)

    def _set_aside(self, part: PartRecord, exc: StorageError) -> None:
        try:
            dest = self.journal.refuse(self.journal.path(part.key), part.to_json().encode())
        except (OSError, StorageError) as err:
            log.error("part %s: could not set its record aside (%s)", part.key, err)
            return
        self.set_aside.append(part.key)
        log.error("part %s: %s; its record is kept in %s", part.key, exc.message, dest)

    # -- start-up recovery ---------------------------------------------------------------
    def recover(self) -> RecoveryReport:
        """Take the run lock, replay the journal, then mark this recipe's undecided
        inspections `interrupted`.

        A journal record is written only to the row it was made for (same run id, record
        key, sequence and recipe digest); any other file, or one that does not parse, is
        moved to journal/refused/ with a line in the report, and the start goes on.
        Captured parts (mode "capture") are never decided, so they stay as they are.
        InUse if another run holds the lock; StorageError if the database fails. A lock
        taken here (not held before) is released on return.
        """
        held = all(lock.held for lock in self.locks)
        self.hold_lock()  # never mark another live run's parts interrupted
        try:
            return self._recover()
        finally:
            if not held:
                self.release_lock()

    def _recover(self) -> RecoveryReport:
        report = RecoveryReport()
        # a run's lock file outlives it only when it did not end (end_run removes it)
        crashed = {
            lock.stem for lock in self.runs_dir.glob("*.lock")
            if lock != self.run_lock.path and not held_elsewhere(lock)
        }
        self.journal.top_up()
        self._db_left = self.db_budget_s
        for path in self.journal.files():
            try:
                part = PartRecord.from_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                self._refuse_file(path, f"not a part record ({type(exc).__name__}: {exc})", report)
                continue
            if part.recipe != self.recipe.name:
                self._refuse_file(path, f"a record of recipe {part.recipe!r}", report)
                continue
            try:
                self._sync(part)
            except RecordRefused as exc:
                self._refuse_file(path, exc.message, report)
                report.set_aside += 1
                continue
            except StorageError as exc:
                raise StorageError(
                    f"held record {path} not written: {exc.message}",
                    hint="free disk space / release the database lock, then start again "
                    "(the record stays in the journal)",
                ) from None
            path.unlink(missing_ok=True)
            report.journal_replayed += 1
        pose_index = {p.name: i for i, p in enumerate(self.recipe.robot.poses)}
        with self.db.session() as s:
            stale = s.scalars(
                select(Part).where(
                    Part.recipe == self.recipe.name,
                    Part.verdict == Verdict.PENDING,
                    Part.mode.in_(("live", "offline")),
                )
            ).all()
            for row in stale:
                if row.run_id and held_elsewhere(self.runs_dir / f"{row.run_id}.lock"):
                    continue  # its run is still going (an offline inspection beside this)
                row.verdict = Verdict.INTERRUPTED
                row.reason = "the station stopped mid-part (crash or power loss); shots kept"
                row.finished_at = row.finished_at or now()
                report.interrupted.append(row.sequence)
                report.shots_added += self._adopt_shot_files(s, row, pose_index)
            report.unconfirmed = _unconfirmed_passes(s, self.recipe.name, crashed)
        for lock in self.runs_dir.glob("*.lock"):  # runs that ended: their files go
            if lock != self.run_lock.path and not held_elsewhere(lock):
                lock.unlink(missing_ok=True)
        return report

    def _refuse_file(self, path: Path, why: str, report: RecoveryReport) -> None:
        try:
            dest = self.journal.refuse(path)
            line = f"journal file {path.name} refused: {why}; moved to {dest.parent}"
        except StorageError as exc:
            line = f"journal file {path} refused: {why}; not moved ({exc.message})"
        log.error(line)
        report.refused.append(line)

    def _adopt_shot_files(self, s: Any, row: Part, pose_index: dict[str, int]) -> int:
        """Shot rows for shot files of an interrupted part that never reached the database."""
        folder = part_folder(self.recipe, row.sequence)
        if not folder.is_dir():
            return 0
        for tmp in folder.rglob(".*.tmp"):  # a write the crash cut off: never a shot
            tmp.unlink(missing_ok=True)
        known = {shot.pose_name for shot in row.shots}
        taken = {shot.pose_index for shot in row.shots}  # the recipe's poses may have changed
        added = 0
        for pose, index in pose_index.items():
            path = folder / f"{pose}.png"
            if pose in known or index in taken or not path.is_file():
                continue
            data = path.read_bytes()
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if img is None:
                continue  # a torn write cannot happen (atomic rename), but never trust a file
            mask = folder / f"{pose}.mask.png"
            shot = ShotRecord(
                pose_index=index,
                pose_name=pose,
                image_path=self.rel(path),
                image_sha256=hashlib.sha256(data).hexdigest(),
                width=int(img.shape[1]),
                height=int(img.shape[0]),
                mask_path=self.rel(mask) if mask.is_file() else None,
            )
            s.add(Shot(part_id=row.id, **shot_columns(shot)))
            added += 1
        return added

    # -- database ------------------------------------------------------------------------
    def _drop_journal(self, part: PartRecord) -> None:
        self.journal.drop(part.key)
        self.journaled.discard(part.key)

    def _sync(self, part: PartRecord, with_detections: bool = True) -> None:
        """Bring the database up to `part` (idempotent: only missing rows are inserted).

        Lock waits count against the part's budget (`db_budget_s`): once it is spent, a
        locked database fails at once.
        """
        for _attempt in range(10):
            t0 = time.monotonic()
            try:
                with self.db.deadline(t0 + max(self._db_left, 0.0)):
                    write_part(self.db, part, with_detections)
                return
            except IntegrityError as exc:
                if part.db_id is not None:
                    raise RecordRefused(f"database refused part {part.key}: {exc.orig}") from None
                part.sequence = None  # another writer took the number: take the next one
            except (TypeError, ValueError) as exc:  # a record whose values make no row
                raise RecordRefused(f"part {part.key} cannot be written: {exc}") from None
            except SQLAlchemyError as exc:
                raise StorageError(f"database {self.db.safe_url} failed: {exc}") from None
            finally:
                self._db_left -= time.monotonic() - t0
        raise StorageError(f"could not allocate a part number for recipe {part.recipe!r}")



UNCONFIRMED = (
    "; the station stopped before the line confirmed this pass: the line rejected the sheet "
    "unless the result had gone out (the PLC's log says which)"
)


def _unconfirmed_passes(s: Any, recipe: str, crashed: set[str]) -> list[int]:
    """Live passes of crashed runs committed before their result went out: the cycle time is
    stored only after the line's answer, so a pass without one may never have reached it.
    Their reason says so (the verdict stays what the detectors decided)."""
    if not crashed:
        return []
    rows = s.scalars(
        select(Part).where(
            Part.recipe == recipe, Part.mode == "live", Part.verdict == Verdict.PASS,
            Part.run_id.in_(sorted(crashed)),
        )
    ).all()
    out = []
    for row in rows:
        if "cycle" not in (row.timings_ms or {}) and UNCONFIRMED not in (row.reason or ""):
            row.reason = (row.reason or "pass") + UNCONFIRMED
            out.append(row.sequence)
    return out
