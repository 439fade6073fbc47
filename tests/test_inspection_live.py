"""Live inspection on the digital twin: records, reject output, pipelining, fault injection.

Each fault is injected at a known point of part 2 (from the inspector's own events) and must
end that part as `fault` with the reject output raised, follow its policy (next part, or wait
for the operator), and leave every captured shot and every decided part in the database.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from sqlalchemy import select
from test_inspection_support import BrightSpot, bright_set, database, sheet, small_recipe

import station.storage.db as dbmod
import station.storage.heatmaps as heatmaps
from station.devices.factory import open_devices
from station.errors import LineIOError
from station.geometry.sheet_map import BLIND_BGR
from station.inspection.cycle import Inspector
from station.inspection.faults import Fault
from station.inspection.recorder import Recorder
from station.inspection.results import Event, RunSummary
from station.recipe import Recipe
from station.storage.models import Part, Verdict
from station.twin import render_part_shots
from station.twin.world import TwinWorld, pose_tcp

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Cell:
    recipe: Recipe
    home: Path
    db: Any
    detector: BrightSpot
    threshold: float = 0.12
    world: TwinWorld | None = None
    devices: Any = None
    events: list[Event] = field(default_factory=list)
    faults_seen: list[Fault] = field(default_factory=list)
    hooks: dict[tuple[str, int], Callable[[], None]] = field(default_factory=dict)
    on_open: Callable[[Any], None] | None = None
    recorder: Recorder | None = None  # default: a fresh one per run
    truths: dict[int, list[dict]] = field(default_factory=dict)  # the twin's, at each start
    cycle_hooks: list[Any] = field(default_factory=list)  # station.inspection.hooks
    line_at_operator: list[tuple[bool, bool, bool]] = field(default_factory=list)  # hb, rej, rv

    def parts(self) -> list[Part]:
        with self.db.session() as s:
            rows = s.scalars(select(Part).order_by(Part.sequence)).all()
            for r in rows:
                _ = [sh.detections for sh in r.shots]
            return list(rows)

    def run(
        self,
        count: int,
        *,
        pipelined: bool = True,
        operator: bool = True,
        stop: threading.Event | None = None,
        seed: int = 3,
    ) -> RunSummary:
        self.world = TwinWorld(self.recipe, seed=seed)
        dets = bright_set(self.recipe, threshold=self.threshold, mean=self.detector.mean)
        dets.detectors[0].detector = self.detector

        def on_event(e: Event) -> None:
            self.events.append(e)
            if e.kind in ("part_started", "part_finished"):
                n = int(e.text.split()[-1]) if e.kind == "part_started" else e.result.sequence
                if e.kind == "part_started":
                    self.truths[n] = self.world.sheet_truth()
                hook = self.hooks.get((e.kind, n))
                if hook is not None:
                    hook()

        def op(fault: Fault) -> bool:
            self.faults_seen.append(fault)
            w = self.world
            self.line_at_operator.append((w.heartbeat, w.reject_output, w.result_valid))
            self.world.clear_faults()
            return operator

        with (
            open_devices(self.recipe, world=self.world) as dev,
            Inspector(
                self.recipe,
                dets,
                self.recorder or Recorder(self.db, self.recipe),
                dev,
                pipelined=pipelined,
                operator=op,
                on_event=on_event,
                hooks=self.cycle_hooks,
            ) as insp,
        ):
            self.devices = dev
            if self.on_open is not None:
                self.on_open(dev)
            return insp.run_live(count=count, stop=stop)


def _cell(home: Path, **overrides: Any) -> Cell:
    recipe = small_recipe(home, **overrides)
    det = BrightSpot()
    det.fit([img for _, img, _ in render_part_shots(recipe, 11, defective=False)])
    return Cell(recipe, home, database(recipe), det)


@pytest.fixture
def cell(station_home: Path) -> Cell:
    return _cell(station_home)


def _check_complete(cell: Cell, n_parts: int) -> list[Part]:
    """Every part decided, every shot on disk with its sha256, every heatmap on disk."""
    import hashlib

    rows = cell.parts()
    assert len(rows) == n_parts, [r.verdict for r in rows]
    root = cell.recipe.data_dir.parent
    for r in rows:
        assert r.verdict in (Verdict.PASS, Verdict.FAIL, Verdict.FAULT), r.verdict
        assert r.finished_at is not None and r.model_versions == {"brightspot": "brightspot-test-1"}
        for s in r.shots:
            data = (root / s.image_path).read_bytes()
            assert hashlib.sha256(data).hexdigest() == s.image_sha256
            for d in s.detections:
                assert (root / d.heatmap_path).is_file()
    assert not list((cell.recipe.data_dir / "journal").glob("*.json"))
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("pipelined", [True, False])
def test_parts_records_and_reject_output(cell: Cell, pipelined: bool) -> None:
    # a threshold between the parts' scores, so that both verdicts occur
    first = cell.run(4, pipelined=pipelined, seed=21)
    cell.threshold = float(np.median([r.scores["brightspot"] for r in first.results]))
    cell.db = database(
        cell.recipe.model_copy(
            update={
                "storage": cell.recipe.storage.model_copy(
                    update={"database_url": f"sqlite:///{cell.home}/other.db"}
                )
            }
        )
    )
    summary = cell.run(4, pipelined=pipelined, seed=21)
    assert {r.verdict for r in summary.results} == {Verdict.PASS, Verdict.FAIL}
    assert summary.parts == 4 and summary.stopped_reason == "done"
    rows = _check_complete(cell, 4)
    for r, res in zip(rows, summary.results, strict=True):
        assert r.verdict is res.verdict and len(r.shots) == 3
        assert [s.pose_name for s in r.shots] == ["left", "centre", "right"]
        assert r.ground_truth in ("good", "defect") and r.mode == "live"
        truth = cell.truths[r.sequence]  # the sheet's defects as the twin drew them
        assert r.twin_defects == truth and (r.ground_truth == "defect") == bool(truth)
        ratio = max(d.normalized_score for s in r.shots for d in s.detections)
        assert (r.verdict is Verdict.FAIL) == (ratio >= 1.0)
        assert r.part_score == pytest.approx(ratio)
        assert all(r.timings_ms[k] > 0 for k in ("exposure", "inference", "logging", "cycle"))
        assert r.line_part_id.startswith("TWIN-")
        assert len(r.shots[0].robot_pose) == 6
    rejected = sum(r.verdict is not Verdict.PASS for r in rows)
    assert 0 < rejected < 4
    assert cell.devices.line.rejects == rejected + 1  # + the safe state at the end
    assert cell.world.reject_output is True
    assert np.allclose(cell.world.tcp[:3], pose_tcp(cell.recipe.robot.home)[:3], atol=0.1)
    assert cell.detector.threads == {"inference_0"}  # both modes: same thread, overlap differs


def test_a_twin_part_keeps_the_defects_the_twin_drew_on_its_sheet(station_home: Path) -> None:
    cell = _cell(station_home, twin__defect_rate=1.0)
    cell.run(2, seed=4)
    rows = _check_complete(cell, 2)
    for r in rows:
        assert r.ground_truth == "defect" and r.twin_defects == cell.truths[r.sequence]
        assert all(len(t["bbox_mm"]) == 4 and t["size_mm"] > 0 for t in r.twin_defects)
    assert rows[0].twin_defects != rows[1].twin_defects  # each part its own sheet's


@pytest.mark.slow
def test_pipelining_does_not_change_verdicts(cell: Cell) -> None:
    on = cell.run(3, pipelined=True, seed=5)
    off = cell.run(3, pipelined=False, seed=5)
    assert [r.verdict for r in on.results] == [r.verdict for r in off.results]
    assert [r.scores for r in on.results] == [r.scores for r in off.results]


@pytest.mark.slow
@pytest.mark.parametrize("pipelined", [True, False])
def test_inference_overlaps_motion_only_when_pipelined(cell: Cell, pipelined: bool) -> None:
    """Order of events, not speed: does scoring shot k run during the move to pose k+1?"""
    cell.detector.delay_s = 0.3
    moves: list[tuple[float, float]] = []

    def watch(dev: Any) -> None:
        original = dev.robot.move_to

        def move_to(pose: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(pose)
            finally:
                moves.append((t0, time.perf_counter()))

        dev.robot.move_to = move_to

    cell.on_open = watch
    cell.run(2, pipelined=pipelined)
    overlaps = sum(
        1 for a0, a1 in cell.detector.intervals for m0, m1 in moves if m0 < a1 and a0 < m1
    )
    assert (overlaps > 0) is pipelined


def _lock_database_during_part(cell: Cell, sequence: int) -> None:
    """Another client holds the SQLite database exclusively while part `sequence` runs."""
    import sqlite3

    path = cell.db.url.removeprefix("sqlite:///")
    lock: list[sqlite3.Connection] = []

    def grab_lock() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0.1)
        conn.execute("BEGIN EXCLUSIVE")
        lock.append(conn)

    def release_lock() -> None:
        lock[0].rollback()
        lock[0].close()

    cell.hooks[("part_started", sequence)] = grab_lock
    cell.hooks[("part_finished", sequence)] = release_lock


def _published(cell: Cell) -> list[bool | None]:
    """The reject output the line saw each time RESULT_VALID rose: one entry per result."""
    out, reject = [], None
    for signal, value in cell.world.line_log:
        reject = value if signal == "reject_output" else reject
        if (signal, value) == ("result_valid", True):
            out.append(reject)
    return out


def _one_fault(cell: Cell, n_parts: int = 3, **run: Any) -> tuple[RunSummary, list[Part]]:
    summary = cell.run(n_parts, **run)
    rows = _check_complete(cell, n_parts)
    assert [r.verdict for r in rows][0] is not Verdict.FAULT
    assert rows[1].verdict is Verdict.FAULT
    assert all(r.verdict is not Verdict.FAULT for r in rows[2:])
    assert summary.counts["fault"] == 1
    # what the line was told for each sheet: rejected unless the part passed, the fault too
    assert _published(cell) == [r.verdict is not Verdict.PASS for r in rows]
    return summary, rows


@pytest.mark.parametrize("kind", ["camera_timeout", "failed_buffer"])
def test_camera_fault_rejects_and_continues(cell: Cell, kind: str) -> None:
    tries = cell.recipe.camera.retries + 1
    cell.hooks[("part_started", 2)] = lambda: cell.world.inject_fault(kind, after=1, count=tries)
    heights: list[float] = []  # robot height whenever a sheet moves

    def watch(dev: Any) -> None:
        original = dev.line.release_part

        def release_part() -> None:
            heights.append(float(cell.world.tcp[2]))
            original()

        dev.line.release_part = release_part

    cell.on_open = watch
    summary, rows = _one_fault(cell)
    assert heights == pytest.approx([cell.recipe.robot.home.position_mm[2]] * 3, abs=0.1)
    assert summary.results[1].fault.kind == "camera"
    assert rows[1].reason.startswith("camera:") and f"{tries} tries" in rows[1].reason
    # the shot taken before the failed grab is kept, with its detections
    assert [s.pose_name for s in rows[1].shots] == ["left"]
    assert len(rows[1].shots[0].detections) == 1
    assert cell.faults_seen == []  # no operator needed
    assert cell.devices.line.rejects >= 2


def test_a_sheet_seen_only_saturated_is_not_inspected(station_home: Path) -> None:
    """Over-exposed: the region is clipped in every view, so no verdict: each part is a
    not_inspected fault (rejected, sheet map kept), and the third in a row calls the operator."""
    cell = _cell(station_home, camera__exposure_us=200_000)
    summary = cell.run(3)
    rows = _check_complete(cell, 3)
    assert [r.verdict for r in rows] == [Verdict.FAULT] * 3
    assert all(r.fault.kind == "not_inspected" for r in summary.results)
    assert all("camera.exposure_us" in r.fault.action for r in summary.results)
    assert rows[0].reason.startswith("not inspected: ") and "seen only saturated" in rows[0].reason
    picture = cv2.imread(str(cell.recipe.data_dir.parent / rows[0].sheet_map_path))
    assert (picture == np.array(BLIND_BGR, np.uint8)).all(axis=2).any()  # blind cells grey
    assert all((cell.recipe.data_dir.parent / r.sheet_map_path).is_file() for r in rows)
    assert [f.kind for f in cell.faults_seen] == ["not_inspected"]
    assert cell.devices.line.rejects >= 3


def test_detector_error_rejects_and_continues(cell: Cell) -> None:
    def fail() -> None:
        cell.detector.fail_with = RuntimeError("CUDA error: an illegal memory access")

    def heal() -> None:
        cell.detector.fail_with = None

    cell.hooks[("part_started", 2)] = fail
    cell.hooks[("part_finished", 2)] = heal
    summary, rows = _one_fault(cell)
    assert "detector brightspot failed: RuntimeError: CUDA error" in rows[1].reason
    assert len(rows[1].shots) == 3  # shots were on disk and in the database before inference
    assert cell.faults_seen == []


def test_nan_score_is_a_fault_that_is_stored_and_blocks_nothing(cell: Cell) -> None:
    # SQLite cannot store NaN: the score is stored as NULL, and the next parts are unaffected.
    cell.hooks[("part_started", 2)] = lambda: setattr(cell.detector, "nan", True)
    cell.hooks[("part_finished", 2)] = lambda: setattr(cell.detector, "nan", False)
    summary, rows = _one_fault(cell, n_parts=4)
    assert "brightspot" in rows[1].reason and len(rows[1].shots) == 3
    assert [d.score for s in rows[1].shots for d in s.detections] == [None] * 3
    assert all(d.score is not None for r in rows[2:] for s in r.shots for d in s.detections)
    assert summary.operator_fault is None
    assert not list((cell.recipe.data_dir / "journal").glob("refused/*.json"))


def test_a_map_with_nan_cells_is_a_fault_though_its_score_is_finite(cell: Cell) -> None:
    """The sheet map skips NaN cells: with a finite score the part would have passed on a
    map that never looked there."""
    cell.hooks[("part_started", 2)] = lambda: setattr(cell.detector, "nan_cells", True)
    cell.hooks[("part_finished", 2)] = lambda: setattr(cell.detector, "nan_cells", False)
    summary, rows = _one_fault(cell)
    assert "brightspot gave a map with 4 non-finite values" in rows[1].reason


def test_a_record_refused_while_a_part_opens_is_reported(cell: Cell) -> None:
    import dataclasses

    rec = Recorder(cell.db, cell.recipe)
    bad = rec.new_part("live")
    rec.open_part(bad)
    shot = rec.add_shot(bad, 0, "left", sheet(False, seed=1))
    # a second shot row at the same pose index: a record the database never takes
    bad.shots.append(dataclasses.replace(shot, pose_name="again", db_id=None))
    bad.verdict, bad.reason = Verdict.FAULT, "test"
    rec.backlog[bad.key] = bad  # held in memory: the first part's opening flushes it
    cell.recorder = rec
    cell.run(2)
    said = [e.text for e in cell.events if e.kind == "message" and e.level == "error"]
    assert any("refused 1 held part record(s) for good" in t for t in said), said
    assert (rec.journal_dir / "refused" / f"{bad.key}.json").is_file()


def test_protective_stop_waits_for_operator(cell: Cell) -> None:
    cell.hooks[("part_started", 2)] = lambda: cell.world.inject_fault("protective_stop", after=1)
    summary, rows = _one_fault(cell)
    assert [f.kind for f in cell.faults_seen] == ["protective_stop"]
    assert "protective/emergency stop" in rows[1].reason
    assert [s.pose_name for s in rows[1].shots] == ["left"]
    assert any(e.kind == "operator" for e in cell.events)


def test_protective_stop_without_operator_stops_safely(cell: Cell) -> None:
    cell.hooks[("part_started", 2)] = lambda: cell.world.inject_fault("protective_stop", after=1)
    summary = cell.run(4, operator=False)
    assert summary.parts == 2 and summary.operator_fault.kind == "protective_stop"
    rows = _check_complete(cell, 2)
    assert rows[1].verdict is Verdict.FAULT
    assert cell.world.reject_output is True


def test_failed_start_leaves_the_reject_output_raised(cell: Cell) -> None:
    # A protective stop at the first move home, with no one to resume: the run stops for the
    # operator (as a stop during a part does), the reject output up, no part opened.
    def stopped(_dev: Any) -> None:
        cell.world.inject_fault("protective_stop", after=0)
        cell.world.reject_output = False

    cell.on_open = stopped
    summary = cell.run(2, operator=False)
    assert summary.parts == 0 and summary.operator_fault.kind == "protective_stop"
    assert [f.kind for f in cell.faults_seen] == ["protective_stop"]
    assert cell.world.reject_output is True and cell.parts() == []


def test_a_stop_at_the_start_waits_for_the_operator_then_runs(cell: Cell) -> None:
    cell.on_open = lambda _dev: cell.world.inject_fault("link_lost", after=0)
    summary = cell.run(2)
    assert [f.kind for f in cell.faults_seen] == ["robot"]
    assert summary.operator_fault is None and summary.parts == 2
    assert all(r.verdict is not Verdict.FAULT for r in _check_complete(cell, 2))


def test_lost_link_holds_sheet_until_operator(cell: Cell) -> None:
    # the link drops right after part 2 arrived: no robot, and no line I/O either
    cell.hooks[("part_started", 2)] = lambda: cell.world.inject_fault("link_lost")
    summary, rows = _one_fault(cell)
    assert summary.results[1].fault.kind == "line_io"
    assert "lost connection to the robot" in rows[1].reason and "line I/O" in rows[1].reason
    assert rows[1].shots == []
    assert [f.kind for f in cell.faults_seen] == ["line_io"]
    assert any("held part 2 rejected and released" in e.text for e in cell.events)


def test_a_release_failing_after_the_result_went_out_keeps_that_verdict(cell: Cell) -> None:
    """The line has the verdict once RESULT_VALID is up: a release failing after it is a line
    I/O fault for the operator, but the record keeps what the line was told, and the resume
    releases the sheet without publishing a second result."""
    failed: list[int] = []

    def watch(dev: Any) -> None:
        original = dev.line.release_part

        def release_part() -> None:
            w = cell.world
            if not failed and w.result_valid and not w.reject_output:  # a pass, published
                failed.append(w.part_id_echo)
                raise LineIOError("release output did not read back")
            original()

        dev.line.release_part = release_part

    cell.on_open = watch
    cell.run(4)
    assert failed, "no part passed"
    n = failed[0]
    rows = _check_complete(cell, 4)
    assert rows[n - 1].verdict is Verdict.PASS and "published, then" in rows[n - 1].reason
    assert [f.kind for f in cell.faults_seen] == ["line_io"]
    assert any(f"held part {n} released (pass, as published)" in e.text for e in cell.events)
    assert not any("rejected and released" in e.text for e in cell.events)
    # each sheet's result went out once, and as its row says
    assert _published(cell) == [r.verdict is not Verdict.PASS for r in rows]


def test_a_publish_failing_for_a_pass_says_the_line_may_have_taken_it(cell: Cell) -> None:
    """RESULT_VALID did not read back for a pass: the part is a fault, rejected at the resume,
    and its reason says the line may have passed the sheet."""
    def watch(dev: Any) -> None:
        original = dev.line.publish_result

        def publish_result(reject: bool) -> None:
            if not reject and not watch.done:
                watch.done = True
                raise LineIOError("result-valid output did not read back")
            original(reject)

        dev.line.publish_result = publish_result

    watch.done = False  # type: ignore[attr-defined]
    cell.on_open = watch
    cell.run(4)
    rows = _check_complete(cell, 4)
    held = [r for r in rows if r.verdict is Verdict.FAULT]
    assert len(held) == 1 and "the line may have taken it as a pass" in held[0].reason
    assert any(f"held part {held[0].sequence} rejected and released" in e.text
               for e in cell.events)


@pytest.mark.slow
def test_locked_database_faults_part_and_keeps_everything(
    cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dbmod, "SQLITE_BUSY_TIMEOUT_S", 0.2)
    cell.db = database(cell.recipe)
    _lock_database_during_part(cell, 2)
    summary, rows = _one_fault(cell)
    assert summary.results[1].fault.kind == "storage" and not summary.results[1].stored
    assert "locked" in rows[1].reason
    # the first shot reached the disk before the database refused its row: not lost
    assert [s.pose_name for s in rows[1].shots] == ["left"]


def _mount_tmpfs(where: Path, size: str = "2m") -> bool:
    where.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def test_full_disk_faults_part_and_continues(
    station_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = tmp_path / "disk"
    real = _mount_tmpfs(disk)
    if not real and os.geteuid() == 0:  # the stand-in below is for non-root runs only
        pytest.fail("cannot mount a tmpfs as root: this test needs the real full disk here")
    cell = _cell(station_home, storage__data_dir=str(disk))
    filler = disk / "filler.bin"

    def fill() -> None:
        if real:
            with open(filler, "wb") as fh:  # take every free byte
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError:
                    pass
        else:  # no tmpfs (not root): the OS answer for a full disk, at the write call

            def full(*a: Any, **k: Any) -> Any:
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(heatmaps.tempfile, "mkstemp", full)

    def free() -> None:
        if real:
            filler.unlink()
        else:
            monkeypatch.undo()

    cell.hooks[("part_started", 2)] = fill
    cell.hooks[("part_finished", 2)] = free
    try:
        summary, rows = _one_fault(cell)
        assert summary.results[1].fault.kind == "storage"
        assert "disk full" in rows[1].reason
        assert rows[1].shots == []
    finally:
        if real:
            subprocess.run(["umount", "-l", str(disk)], check=False)


def test_stop_finishes_the_part_in_progress(cell: Cell) -> None:
    stop = threading.Event()
    cell.hooks[("part_started", 2)] = stop.set  # Ctrl-C while part 2 is on the table
    summary = cell.run(5, stop=stop)
    assert summary.parts == 2 and summary.stopped_reason == "stopped"
    rows = _check_complete(cell, 2)
    assert len(rows[1].shots) == 3 and rows[1].verdict is not Verdict.FAULT
    assert cell.world.reject_output is True
    assert np.allclose(cell.world.tcp[:3], pose_tcp(cell.recipe.robot.home)[:3], atol=0.1)


def test_repeated_faults_call_the_operator(cell: Cell) -> None:
    cell.hooks[("part_started", 1)] = lambda: cell.world.inject_fault("camera_timeout")
    opened: list[bool] = []

    def count_opens(dev: Any) -> None:
        real = dev.camera.open
        dev.camera.open = lambda: (opened.append(True), real())[1]

    cell.on_open = count_opens
    summary = cell.run(4, operator=True)
    assert [r.verdict for r in summary.results[:3]] == [Verdict.FAULT] * 3
    assert summary.results[3].verdict is not Verdict.FAULT  # operator cleared it
    assert len(cell.faults_seen) == 1 and "3 faults in a row" in cell.faults_seen[0].message
    # it has repeated: the operator is told what to check, not "if this repeats"
    assert cell.faults_seen[0].action == "check the camera's cable and power, then resume"
    assert opened == [True]  # reopened on resume: a replugged camera is a new device


CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_inspection_support import bright_set, database, small_recipe
    from station.devices.factory import open_devices
    from station.inspection.cycle import Inspector
    from station.inspection.recorder import Recorder

    recipe = small_recipe(Path({home!r}))
    dets = bright_set(recipe)
    det = dets.detectors[0].detector
    original = det.predict

    def predict(images):
        if det.calls >= 4:  # part 2, second shot: the power goes
            os._exit(9)
        return original(images)

    det.predict = predict
    with open_devices(recipe) as dev, Inspector(
        recipe, dets, Recorder(database(recipe), recipe), dev, pipelined=False
    ) as insp:
        insp.run_live(count=5)
    """
)


@pytest.mark.slow
def test_crash_mid_part_leaves_it_interrupted(cell: Cell) -> None:
    script = CRASH_SCRIPT.format(tests=str(REPO / "tests"), home=str(cell.home))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr.decode()[-2000:]
    rows = cell.parts()
    assert [r.verdict for r in rows][1] is Verdict.PENDING
    summary = cell.run(1)  # restart
    assert summary.recovery.interrupted == [2]
    rows = cell.parts()
    assert [r.sequence for r in rows] == [1, 2, 3]
    assert rows[1].verdict is Verdict.INTERRUPTED
    assert [s.pose_name for s in rows[1].shots] == ["left", "centre"]  # both shots kept
    assert rows[0].verdict is not Verdict.PENDING and rows[2].verdict is not Verdict.PENDING


def test_line_contract_order_on_the_twin(cell: Cell) -> None:
    """Per sheet: reject output set (and read back), then the sheet's number, then RESULT_VALID;
    RESULT_VALID low again when the sheet leaves. The heartbeat runs only while inspecting, and
    the safe state leaves it still, the reject output high and RESULT_VALID low."""
    summary = cell.run(3)
    assert cell.world is not None
    expected: list[tuple[str, object]] = [("heartbeat", True)]
    for n, r in enumerate(summary.results, start=1):
        expected += [
            ("reject_output", r.verdict is not Verdict.PASS),
            ("part_id_echo", n),
            ("result_valid", True),
            ("result_valid", False),
        ]
    expected += [("heartbeat", False), ("reject_output", True)]
    assert cell.world.line_log == expected
    assert cell.world.result_valid is False and cell.world.heartbeat is False


def _fill_disk(folder: Path) -> Path:
    filler = folder / "filler.bin"
    try:
        with open(filler, "wb") as fh:  # take every free byte
            while True:
                fh.write(b"\1" * 4096)
                fh.flush()
    except OSError:
        pass
    return filler


@pytest.mark.parametrize("reserve_mb", [None, 0.0])  # None: the default reserve
def test_database_and_data_on_one_full_disk_lose_no_decision(
    station_home: Path, tmp_path: Path, reserve_mb: float | None
) -> None:
    """Issue 23: database and data on one 4 MB tmpfs, filled mid-run. With a journal reserve
    the faulted sheets are held in the journal (three in a row call the operator) and come
    back as `fault` at the next start. Without one, the first decision stored nowhere stops
    the line for the operator; space freed, the run resumes and writes it. Every sheet but
    the passes is rejected, and every decided sheet ends with its row and its verdict."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        storage = {"data_dir": str(disk), "database_url": f"sqlite:///{disk}/station.db"}
        if reserve_mb is not None:
            storage["journal_reserve_mb"] = reserve_mb
        cell = _cell(station_home, storage=storage)
        fillers: list[Path] = []
        cell.hooks[("part_started", 2)] = lambda: fillers.append(_fill_disk(disk))
        if reserve_mb == 0:  # the operator frees space before resuming
            cell.hooks[("part_finished", 2)] = lambda: fillers[0].unlink()
        summary = cell.run(3 if reserve_mb == 0 else 6, operator=reserve_mb == 0)
        said = [e.text for e in cell.events if e.kind in ("message", "operator")]
        decided = {r.line_part_id: r.verdict for r in summary.results}
        assert summary.results[1].verdict is Verdict.FAULT
        assert cell.devices.line.rejects >= sum(v is not Verdict.PASS for v in decided.values())
        assert cell.world.reject_output
        if reserve_mb is None:
            assert 2 <= summary.parts < 6 and summary.operator_fault.kind == "storage", said
            assert set(list(decided.values())[1:]) == {Verdict.FAULT}
            assert "faults in a row" in summary.operator_fault.message
            assert not any("no journal" in t for t in said), said
            fillers[0].unlink()
            after = cell.run(1, seed=4)  # restart with space: held records go in first
            assert after.recovery.interrupted == [] and after.recovery.refused == []
        else:
            assert summary.parts == 3 and summary.operator_fault is None
            (fault,) = cell.faults_seen
            assert fault.kind == "storage" and "stored nowhere" in fault.message, said
        rows = {r.line_part_id: r.verdict for r in cell.parts()}
        assert {k: rows.get(k) for k in decided} == decided
        assert Verdict.INTERRUPTED not in rows.values() and Verdict.PENDING not in rows.values()
        assert not list((cell.recipe.data_dir / "journal").glob("*.json"))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_locked_database_wait_is_bounded_by_the_part_timeout(
    station_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23: a locked database stalled a sheet for two busy timeouts (61 s). The total
    lock wait of one part is bounded by line_io.part_timeout_s."""
    monkeypatch.setattr(dbmod, "SQLITE_BUSY_TIMEOUT_S", 4.0)
    cell = _cell(station_home, line_io__part_timeout_s=0.5)
    _lock_database_during_part(cell, 2)
    summary, rows = _one_fault(cell)
    assert "locked" in rows[1].reason and not summary.results[1].stored
    assert summary.results[1].timings_ms["logging"] < 2000  # 0.5 s of waits, not 2 x 4 s


@pytest.mark.slow
def test_second_live_run_on_a_recipe_is_refused(cell: Cell) -> None:
    """Issue 23: a second live run marked the first run's parts interrupted mid-part."""
    import os

    from station.errors import InUse

    in_part, go_on = threading.Event(), threading.Event()

    def hold() -> None:
        in_part.set()
        go_on.wait(30)

    cell.hooks[("part_started", 2)] = hold
    first: list[RunSummary] = []
    runner = threading.Thread(target=lambda: first.append(cell.run(3)))
    runner.start()
    try:
        assert in_part.wait(30)
        second = Recorder(database(cell.recipe), cell.recipe)
        with pytest.raises(InUse) as err:
            second.recover()
        lock_file = cell.recipe.data_dir / "live.lock"
        assert str(lock_file) in err.value.message and f"PID {os.getpid()}" in err.value.message
        assert [r.verdict for r in cell.parts()][1] is Verdict.PENDING  # not interrupted
    finally:
        go_on.set()
        runner.join(60)
    assert first[0].parts == 3 and first[0].recovery.interrupted == []
    _check_complete(cell, 3)
    assert Recorder(cell.db, cell.recipe).recover().interrupted == []  # the lock was released


def test_a_hooks_database_work_waits_seconds_not_the_busy_timeout(cell: Cell) -> None:
    """Hooks' database work (drift charts, alarms) runs under HOOK_DB_WAIT_S: a database
    locked by another program must not hold up the next sheet for a whole busy timeout."""
    from station.inspection.hooks import HOOK_DB_WAIT_S, CycleHook
    from station.storage import db as dbmod

    left_ms: list[int] = []

    class Probe(CycleHook):
        name = "probe"

        def start(self) -> list[Event]:
            left_ms.append(dbmod._wait_ms())  # what a lock wait may take now
            return []

        def part(self, result: Any) -> list[Event]:
            left_ms.append(dbmod._wait_ms())
            return []

    cell.cycle_hooks = [Probe()]
    assert cell.run(2).parts == 2
    assert len(left_ms) == 3 and all(0 <= ms <= HOOK_DB_WAIT_S * 1000 for ms in left_ms)
    assert dbmod._wait_ms() == dbmod.SQLITE_BUSY_TIMEOUT_S * 1000  # the deadline ends with it


def test_a_camera_other_than_the_calibrated_one_stops_the_run_before_any_sheet(
    cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With camera.serial null the driver opens whichever camera is there: a swapped camera
    has its own lens and mounting, so the cell calibration of another is refused."""
    import dataclasses as dc

    from station.cellcal.store import inspection_camera
    from station.errors import CellCalibrationError
    from station.inspection import cycle

    made = dc.replace(inspection_camera(cell.recipe), calibrated=True, camera_serial="0815-0001")
    monkeypatch.setattr(cycle, "inspection_camera", lambda _recipe: made)
    with pytest.raises(CellCalibrationError, match="made with camera 0815-0001, the camera "
                       "opened is TWIN-0001"):
        cell.run(2)
    assert cell.parts() == [] and cell.world.reject_output is True
    same = dc.replace(made, camera_serial="TWIN-0001")
    monkeypatch.setattr(cycle, "inspection_camera", lambda _recipe: same)
    assert cell.run(1).parts == 1
