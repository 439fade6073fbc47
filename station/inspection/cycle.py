"""The inspection cycle: a part arrives, poses, shots, detectors, verdict, reject output, record.

One part, live:

    wait for a sheet -> Part row (pending) -> for each pose: move, grab, store shot, queue the
    shot for inference -> move home -> collect scores -> verdict -> commit record -> set the
    reject output (confirmed by read-back) -> release the sheet

With `pipelined=True` one worker thread scores shot k (and writes its heatmaps) while the robot
moves to pose k+1, and the last shot while it moves home. With `pipelined=False` every step
waits for the previous one (the baseline of tools/bench_cycle.py; same worker thread, so the
modes differ only by the overlap). `timings_ms` on the Part row sums each activity: motion,
exposure (offline: reading the file), inference (preprocessing, detectors, sheet map),
starved (inference idle between shots, waiting for motion), logging (files and database), line
(reject output and release), wait (the cycle blocked on inference) and cycle (the sheet's
arrival to its release). Pipelined, the activities add up to more than the cycle.

Faults (station.inspection.faults) end the part as `fault`, raise the reject output and then
continue, wait for the operator, or stop. Waiting and stopping (Ctrl-C, `count` reached) leave
the cell safe: robot home, heartbeat still, REJECT up, RESULT_VALID low.

Offline mode (`run_offline`) takes stored images (station.inspection.offline) through the same
path, without robot, camera or line. What the cycle reports: station.inspection.results.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from functools import partial
from typing import Any

import numpy as np

from station.cellcal.store import CameraModel, inspection_camera
from station.decision import Decision, Verdict, combine_scores, decide
from station.errors import NowhereToStore, StationError, StorageError
from station.inspection.faults import MAX_CONSECUTIVE_FAULTS, Fault, Policy, classify, in_a_row
from station.inspection.hooks import HOOK_DB_WAIT_S, CycleHook
from station.inspection.line_hold import HeldSheet, release_held, send_result, still_held
from station.inspection.models import DetectorSet
from station.inspection.offline import OfflinePart, offline_shots
from station.inspection.recorder import PartRecord, Recorder, RecoveryReport, ShotRecord
from station.inspection.reference_shot import ReferenceCard, hand_over
from station.inspection.results import (
    Acquired,
    Event,
    EventFn,
    OperatorFn,
    PartResult,
    RunSummary,
    SheetOutcome,
    ShotScores,
    Timings,
    recovery_messages,
)
from station.inspection.sheet import PartSheet, finish_sheet
from station.recipe import Recipe


class Inspector:
    """Runs parts through acquisition, detectors, decision, line output and the recorder."""

    def __init__(
        self,
        recipe: Recipe,
        detectors: DetectorSet,
        recorder: Recorder,
        devices: Any = None,  # station.devices.factory.Devices; None offline
        *,
        pipelined: bool = True,
        operator: OperatorFn | None = None,
        on_event: EventFn | None = None,
        max_consecutive_faults: int = MAX_CONSECUTIVE_FAULTS,
        camera: CameraModel | None = None,
        hooks: Sequence[CycleHook] = (),
    ) -> None:
        self.recipe = recipe
        self.hooks = list(hooks)  # see station.inspection.hooks
        # the sheet map's camera model: exact on the twin, else calibrated, else nominal
        self.camera = camera if camera is not None else inspection_camera(recipe)
        self.sheet: SheetOutcome | None = None  # the last part's sheet map, for its result
        self._part_sheet = PartSheet(recipe, self.camera)  # the part in progress
        self.detectors = detectors
        self.recorder = recorder
        self.devices = devices
        self.pipelined = pipelined
        self.operator = operator
        self.on_event = on_event
        self.max_consecutive_faults = max_consecutive_faults
        self._refused_told = len(recorder.set_aside)  # set-aside records already reported
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            1, thread_name_prefix="inference"
        )
        self.held: HeldSheet | None = None  # a sheet not released (line I/O failed)
        self.card = ReferenceCard(recipe, devices)  # the drift reference card (live)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for hook in self.hooks:
            hook.close()
        self.recorder.end_run()

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _emit(
        self, kind: str, text: str = "", result: PartResult | None = None, level: str = "info"
    ) -> None:
        if self.on_event is not None:
            self.on_event(Event(kind, text, result, level))

    # -- one shot through the detectors (on the worker thread when pipelined) -----------
    def _score_shot(
        self, part: PartRecord, shot: ShotRecord, image: np.ndarray, t: Timings, sheet: PartSheet
    ) -> ShotScores:
        t.shot_started()
        with t.measure("inference"):
            for hook in self.hooks:  # before the detectors; a StationError faults the part
                stats = hook.shot(part, shot.pose_name, image)
                if stats:
                    shot.stats[hook.name] = stats
            outputs = self.detectors.score(image)
            # onto the part's sheet map (a failure is kept there and faults the part)
            sheet.add(shot.pose_name, shot.robot_pose, {o.detector: o.amap for o in outputs}, image)
        t.shot_done()
        t0 = time.perf_counter()
        dets = [
            self.recorder.write_detection(
                part,
                shot,
                detector=o.detector,
                model_version=o.version,
                score=o.score,
                threshold=o.threshold,
                amap=o.amap,
                latency_ms=o.latency_ms,
                store_raw=self.recipe.decision.store_raw_maps,
                crop=self.recipe.preprocess.crop,
            )
            for o in outputs
        ]
        t.add("logging", (time.perf_counter() - t0) * 1000.0)
        return ShotScores(shot, {o.detector: o.score for o in outputs}, dets)

    def _submit(
        self, part: PartRecord, shot: ShotRecord, image: np.ndarray, timings: Timings
    ) -> Future[ShotScores]:
        """Score the shot on the inference thread; unless pipelined, wait until it is done.

        Both modes run the detectors on the same thread, so they differ only by the overlap.
        """
        if self._pool is None:
            raise StationError("the inspector is closed")
        sheet = self._part_sheet  # the part's, fixed when the shot is queued
        fut = self._pool.submit(self._score_shot, part, shot, image, timings, sheet)
        if not self.pipelined:
            futures_wait([fut])
        return fut

    # -- one part, any source ----------------------------------------------------------
    def _run_part(
        self,
        mode: str,
        line_part_id: str | None,
        shots: Callable[[Timings], Iterator[Acquired]],
        ground_truth: str | None = None,
    ) -> tuple[PartRecord, Timings, Fault | None, float]:
        """Acquire, score, decide and record one part (the line output is the caller's)."""
        t_start = time.perf_counter()
        timings = Timings()
        part = self.recorder.new_part(mode, line_part_id)
        part.model_versions = self.detectors.model_versions
        part.calibration_id = self.detectors.calibration_id
        part.ground_truth = ground_truth
        self._part_sheet = PartSheet(self.recipe, self.camera)
        futures, pose_names, fault = self._acquire(part, shots, timings)
        scores, late = self._collect(futures, timings)
        fault = fault or late
        self.sheet = None
        if fault is None and part.db_id is not None:
            self.sheet, fault = finish_sheet(
                self._part_sheet, part, self.recorder, self.detectors.thresholds, timings
            )
        if fault is None and part.db_id is not None:
            peaks = self.sheet.peaks if self.sheet is not None else None
            th, cfg = self.detectors.thresholds, self.recipe.decision
            decision = decide(scores, th, cfg, pose_names, peaks)
        elif fault is None:
            decision = Decision.fault("the part was not recorded")
        else:
            decision = Decision.fault(fault.message)
        part.verdict = decision.verdict
        part.reason = decision.reason
        part.part_score = decision.part_score
        part.timings_ms = timings.rounded()
        if part.db_id is not None or fault is None or fault.kind != "storage":
            with timings.measure("logging"):
                try:
                    self.recorder.finish_part(part)
                except StorageError as exc:
                    fault = self._refused(part, exc) or fault or classify(exc)
        else:
            fault = self._refused(part, fault.message.removeprefix("storage: ")) or fault
        return part, timings, fault, t_start

    def _acquire(
        self, part: PartRecord, shots: Callable[[Timings], Iterator[Acquired]], timings: Timings
    ) -> tuple[list[Future[ShotScores]], list[str], Fault | None]:
        """Open the part's record, then store each shot and queue it for scoring.

        Returns the queued shots, their pose names and the fault that ended the acquisition
        early (None: all shots taken). Shots with ground truth (the twin's) set the part's.
        """
        futures: list[Future[ShotScores]] = []
        pose_names: list[str] = []
        fault: Fault | None = None
        seen_truth = False
        any_defect = False
        try:
            with timings.measure("logging"):
                self.recorder.open_part(part)
            self._emit("part_started", f"part {part.sequence}")
            for acq in shots(timings):
                if acq.reference:
                    warn = partial(self._emit, "message", level="warning")
                    hand_over(part, acq, self.hooks, warn)
                    continue
                with timings.measure("logging"):
                    shot = self.recorder.add_shot(
                        part,
                        acq.pose_index,
                        acq.pose_name,
                        acq.image,
                        camera_settings=acq.camera_settings,
                        robot_pose=acq.robot_pose,
                        mask=acq.mask,
                    )
                pose_names.append(acq.pose_name)
                if acq.defects is not None:
                    seen_truth = True
                    any_defect = any_defect or bool(acq.defects)
                if acq.sheet_defects is not None:  # a defect no shot sees is still a defect
                    seen_truth = True
                    any_defect = any_defect or bool(acq.sheet_defects)
                    part.twin_defects = list(acq.sheet_defects)
                futures.append(self._submit(part, shot, acq.image, timings))
        except Exception as exc:  # noqa: BLE001 (every failure ends the part as a fault)
            fault = classify(exc)
        if seen_truth:
            part.ground_truth = "defect" if any_defect else "good"
        return futures, pose_names, fault

    def _collect(
        self, futures: list[Future[ShotScores]], timings: Timings
    ) -> tuple[dict[str, list[float]], Fault | None]:
        """Each detector's scores over the shots, and the first scoring fault; the worker may
        still be on the last shot (that wait is timed)."""
        scores: dict[str, list[float]] = defaultdict(list)
        fault: Fault | None = None
        with timings.measure("wait"):
            for fut in futures:
                try:
                    res = fut.result()
                except Exception as exc:  # noqa: BLE001
                    fault = fault or classify(exc)
                    continue
                res.shot.detections.extend(res.detections)
                for name, s in res.scores.items():
                    scores[name].append(s)
        return scores, fault

    def _refused(self, part: PartRecord, exc: StationError | str | None) -> Fault | None:
        """The database did not take the part: fault it and hold it in the journal; the
        operator fault when the journal could not take it either."""
        if part.verdict is not Verdict.FAULT:
            said = f"{part.verdict.value}, {part.reason}"
            part.reason = f"record refused by the database ({exc}); detectors said: {said}"
            part.verdict = Verdict.FAULT
        why = exc.message if isinstance(exc, StationError) else (exc or "")
        try:
            self.recorder.keep(part, why)
        except NowhereToStore as lost:
            return classify(lost)
        return None

    def _result(self, part: PartRecord, timings: Timings, fault: Fault | None) -> PartResult:
        per: dict[str, list[float]] = defaultdict(list)
        for shot in part.shots:
            for d in shot.detections:
                per[d.detector].append(d.score)
        how = self.recipe.decision.combine_poses
        combined = {n: combine_scores(v, how) for n, v in per.items() if v}
        if how == "sheet_map":  # the part's score is its sheet map's peak (None: no map)
            combined = dict(self.sheet.peaks) if self.sheet is not None else {}
        th = self.detectors.thresholds
        return PartResult(
            sequence=part.sequence,
            part_id=part.db_id,
            mode=part.mode,
            verdict=part.verdict,
            reason=part.reason or "",
            part_score=part.part_score,
            scores=combined,
            thresholds={n: th[n] for n in combined if n in th},
            normalized={n: s / th[n] for n, s in combined.items() if n in th},
            timings_ms=timings.rounded(),
            ground_truth=part.ground_truth,
            fault=fault,
            stored=part.key not in self.recorder.backlog,
            line_part_id=part.line_part_id,
            sheet=self.sheet,
        )

    # -- live -----------------------------------------------------------------------------
    def _live_shots(self, timings: Timings) -> Iterator[Acquired]:
        robot, camera = self.devices.robot, self.devices.camera
        for k, pose in enumerate(self.recipe.robot.poses):
            with timings.measure("motion"):
                state = robot.move_to(pose)
            with timings.measure("exposure"):
                frame = camera.grab()
            yield Acquired(
                pose_index=k,
                pose_name=pose.name,
                image=frame.image,
                camera_settings=dict(frame.camera_settings),
                robot_pose=[float(v) for v in state.tcp_mm_rotvec],
                mask=frame.mask,
                defects=list(frame.defects) if frame.mask is not None else None,
                sheet_defects=frame.sheet_defects,
            )
        if self.card.due():
            yield self.card.shoot(timings)
        # Clear of the sheet; when pipelined, this overlaps scoring the last shot.
        with timings.measure("motion"):
            robot.move_to(self.recipe.robot.home)

    def live_part(self, line_part_id: str | None) -> PartResult:
        """One part on the cell, from its arrival to its release (or hold, see below).

        If the line I/O fails while the result goes out, the sheet is not released: it stays
        held (`self.held`, see station.inspection.line_hold) until the operator has restored
        the line I/O and resumed.
        """
        part, timings, fault, t_start = self._run_part("live", line_part_id, self._live_shots)
        if fault is not None and fault.kind not in ("robot", "protective_stop", "line_io"):
            # the part ended early, maybe with the robot over the sheet: clear the way first
            try:
                with timings.measure("motion"):
                    self.devices.robot.move_to(self.recipe.robot.home)
            except Exception as exc:  # noqa: BLE001
                fault = classify(exc)
                part.reason = f"{part.reason}; then {fault.message}"
        with timings.measure("line"):
            failed = send_result(self.devices.line, part)
        if failed is not None:
            fault, self.held = failed
        timings.add("cycle", (time.perf_counter() - t_start) * 1000.0)
        part.timings_ms = timings.rounded()
        # the cycle time is known only now: store it with any late change of verdict
        if part.key not in self.recorder.backlog:
            try:
                self.recorder.finish_part(part)
            except StorageError as exc:
                if part.verdict is not Verdict.FAULT:
                    # the verdict row is committed already; only the timings are late
                    self._emit("message", f"cycle timings not stored: {exc}", level="warning")
                else:
                    fault = self._refused(part, exc) or fault
        else:
            # refresh the journal copy (a failure with no copy on disk stops the line)
            fault = self._refused(part, part.reason) or fault
        return self._after_hooks(self._result(part, timings, fault))

    def _wait_for_part(self, stop: threading.Event) -> str | None:
        line = self.devices.line
        waited = 0.0
        warned = False
        while not stop.is_set():
            t0 = time.monotonic()
            pid = line.wait_for_part(0.5)
            if pid is not None:
                return pid
            waited += time.monotonic() - t0
            if not warned and waited >= self.recipe.line_io.part_timeout_s:
                self._emit("waiting", f"no sheet for {waited:.0f} s", level="warning")
                warned = True
        return None

    def _resume_after(self, fault: Fault) -> Fault | None:
        """Ask the operator to fix `fault`, then bring the cell back. None: resumed; else the
        fault the station stops on (the last one the operator was told of).

        Meanwhile the line sees a stopped station (heartbeat still, REJECT up, RESULT_VALID
        low). Resuming reconnects the robot (robot and line faults), reopens the line I/O or
        the camera (a replugged camera is a new device), restarts the heartbeat (part ids from
        1), moves the robot home, and rejects and releases a held sheet; if that fails, the
        operator is asked again."""
        while True:
            try:
                self.devices.line.fail_safe()
            except Exception as exc:  # noqa: BLE001 - a dead line I/O is the fault told below
                why = exc.message if isinstance(exc, StationError) else exc
                self._emit("message", f"could not stop the heartbeat: {why}", level="warning")
            self._emit("operator", str(fault), level="error")
            if self.operator is None or not self.operator(fault):
                return fault
            try:
                robot, line = self.devices.robot, self.devices.line
                if fault.kind in ("robot", "protective_stop", "line_io"):
                    with contextlib.suppress(StationError):
                        robot.close()
                    robot.connect()
                if fault.kind == "line_io":
                    # only then: reopening may ignore a sheet already present (edge-triggered)
                    with contextlib.suppress(StationError):
                        line.close()
                    line.open()
                line.start_heartbeat()
                if fault.kind == "camera":
                    with contextlib.suppress(StationError):
                        self.devices.camera.close()
                    self.devices.camera.open()
                robot.move_to(self.recipe.robot.home)
                if self.held is not None:
                    self._emit("message", release_held(line, self.held))
                    self.held = None
                self._emit("message", "resumed")
                return None
            except Exception as exc:  # noqa: BLE001
                fault = classify(exc)
                if fault.policy is Policy.STOP:
                    raise

    def _safe_state(self) -> None:
        """Robot home, reject output raised; errors are reported, not raised."""
        try:
            self.devices.robot.move_to(self.recipe.robot.home)
        except Exception as exc:  # noqa: BLE001
            self._emit("message", f"robot not sent home: {exc}", level="warning")
        try:  # heartbeat still, reject output up, RESULT_VALID low: the line rejects all
            self.devices.line.fail_safe()
        except Exception as exc:  # noqa: BLE001
            self._emit("message", f"could not raise the reject output: {exc}", level="error")
        if self.held is not None:
            self._emit("message", still_held(self.held), level="error")
        self._flush_backlog()

    def _flush_backlog(self) -> None:
        messages, self._refused_told = self.recorder.flush_and_report(self._refused_told)
        for text, level in messages:
            self._emit("message", text, level=level)

    def _stop_or_resume(self, fault: Fault, summary: RunSummary) -> bool:
        """Apply a fault's policy after its part; False: the run ends."""
        if fault.policy is Policy.OPERATOR:
            fault = self._resume_after(fault)
            if fault is None:
                return True
        summary.stopped_reason = str(fault)
        summary.operator_fault = fault
        return False

    def _report_recovery(self, rec: RecoveryReport) -> None:
        for text, level in recovery_messages(rec, self.recorder.journal_dir / "refused"):
            self._emit("message", text, level=level)

    def run_live(self, count: int | None = None, stop: threading.Event | None = None) -> RunSummary:
        """Inspect parts until `stop` is set, `count` parts are done, or a fault stops it."""
        if self.devices is None:
            raise StationError("live inspection needs devices (robot, camera, line)")
        stop = stop or threading.Event()
        summary = RunSummary()
        t_run = time.perf_counter()
        consecutive = 0
        self.recorder.hold_lock()  # before touching the cell: another run may be driving it
        try:  # from here on, however the run ends, the cell is left safe (reject output up)
            summary.recovery = self.recorder.recover()
            self._report_recovery(summary.recovery)
            self.camera.refuse_other_camera(self.devices.camera.settings().get("serial"))
            self._announce()
            started = False  # robot home and heartbeat on; a fault there waits for the operator
            while not stop.is_set() and (count is None or summary.parts < count):
                try:
                    if not started:
                        self.devices.robot.move_to(self.recipe.robot.home)
                        self.devices.line.start_heartbeat()
                        started, t_run = True, time.perf_counter()
                    self._emit("waiting", "waiting for a sheet")
                    pid = self._wait_for_part(stop)
                except Exception as exc:  # noqa: BLE001
                    fault = classify(exc)
                    if not started and fault.policy is Policy.STOP:
                        raise  # a bug at the start: its traceback is the report
                    if not self._stop_or_resume(fault, summary):
                        break
                    continue
                if pid is None:
                    break
                result = self.live_part(pid)
                summary.elapsed_s = time.perf_counter() - t_run
                summary.add(result)
                self._emit("part_finished", result.reason, result)
                fault = result.fault
                if fault is None:
                    consecutive = 0
                    self._flush_backlog()
                    continue
                consecutive += 1
                if fault.policy is Policy.CONTINUE and consecutive >= self.max_consecutive_faults:
                    fault = in_a_row(fault, consecutive)  # now for the operator
                if fault.policy is Policy.CONTINUE:
                    self._emit("message", str(fault), level="error")
                else:  # said once: to the operator, or in the summary when the run stops
                    if not self._stop_or_resume(fault, summary):
                        break
                    consecutive = 0
                self._flush_backlog()
        finally:
            summary.elapsed_s = time.perf_counter() - t_run
            try:
                self._safe_state()
            finally:
                self.recorder.release_lock()
        if not summary.stopped_reason:
            summary.stopped_reason = "stopped" if stop.is_set() else "done"
        return summary

    # -- offline --------------------------------------------------------------------------
    def offline_part(self, group: OfflinePart) -> PartResult:
        """One part of stored images (see station.inspection.offline), without line output."""
        t_start = time.perf_counter()
        shots = offline_shots(group, self.recipe)
        part, timings, fault, _ = self._run_part("offline", group.key, shots, group.ground_truth)
        timings.add("cycle", (time.perf_counter() - t_start) * 1000.0)
        part.timings_ms = timings.rounded()
        if part.key not in self.recorder.backlog:
            with contextlib.suppress(StorageError):
                self.recorder.finish_part(part)
        return self._after_hooks(self._result(part, timings, fault))

    def _after_hooks(self, result: PartResult) -> PartResult:
        """Show the finished part to the hooks (`_hook_events`); theirs go out first."""
        self._hook_events(lambda hook: hook.part(result))
        return result

    def _hook_events(self, call: Callable[[CycleHook], list[Event]]) -> None:
        """Call each hook; the events it returns go out. A failing hook is a warning (a hook
        never stops the line), and their database work waits at most HOOK_DB_WAIT_S in all."""
        with self.recorder.db.deadline(time.monotonic() + HOOK_DB_WAIT_S):
            for hook in self.hooks:
                try:
                    events = call(hook)
                except Exception as exc:  # noqa: BLE001
                    self._emit("message", f"{hook.name}: {exc}", level="warning")
                    continue
                for event in events:
                    if self.on_event is not None:
                        self.on_event(event)

    def _announce(self) -> None:
        self._emit("message", f"sheet map camera model: {self.camera.source}")
        if self.detectors.calibration_note:
            self._emit("message", self.detectors.calibration_note, level="warning")
        for why in self.detectors.warnings:  # the calibration's doubts, the models' imaging
            self._emit("message", why, level="warning")
        self._hook_events(lambda hook: hook.start())

    def run_offline(
        self, groups: Sequence[OfflinePart], stop: threading.Event | None = None
    ) -> RunSummary:
        summary = RunSummary()
        self._announce()
        t_run = time.perf_counter()
        for group in groups:
            if stop is not None and stop.is_set():
                summary.stopped_reason = "stopped"
                break
            result = self.offline_part(group)
            summary.elapsed_s = time.perf_counter() - t_run
            summary.add(result)
            self._emit("part_finished", result.reason, result)
            if result.fault is not None and result.fault.policy is Policy.STOP:
                summary.stopped_reason = str(result.fault)
                break
        summary.elapsed_s = time.perf_counter() - t_run
        self._flush_backlog()
        summary.stopped_reason = summary.stopped_reason or "done"
        return summary
