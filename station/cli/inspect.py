"""`station inspect`: run the line live, or the same decision path on stored images."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from station.errors import StationError

EXIT_OPERATOR = 3  # stopped on a fault that needs a person (message printed)


SHADOW_HELP = (
    "Candidate model version to run beside the live models, one --shadow per detector "
    "(stored, never drives the line; "
    "doubles inference). Default: the recipe's retrain.shadow."
)


def with_shadow(rcp: Any, shadow: list[str] | None) -> Any:
    """The recipe with `--shadow` versions as its retrain.shadow (unchanged without)."""
    if not shadow:
        return rcp
    return rcp.model_copy(update={"retrain": rcp.retrain.model_copy(update={"shadow": shadow})})


def register(app: typer.Typer) -> None:
    @app.command("inspect")
    def inspect_cmd(
        paths: list[Path] = typer.Argument(
            None, help="Stored images or folders (offline). Omit with --live.", show_default=False
        ),
        recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe name or path."),
        live: bool = typer.Option(False, "--live", help="Run the cell: robot, camera, line."),
        count: int | None = typer.Option(
            None, "--count", "-n", min=1, help="Stop after N parts (live). Default: until Ctrl-C."
        ),
        pipelined: bool = typer.Option(
            True, "--pipeline/--no-pipeline", help="Overlap inference with robot motion."
        ),
        view: bool | None = typer.Option(
            None, "--view/--no-view", help="Live screen (default: when the output is a terminal)."
        ),
        shadow: list[str] | None = typer.Option(None, "--shadow", help=SHADOW_HELP),
    ) -> None:
        """Inspect parts: verdicts against calibrated thresholds, reject output, database.

        Live: Ctrl-C finishes the part in progress, leaves the cell safe and exits.
        A second Ctrl-C aborts at once; that part is marked interrupted at the next start.
        """
        from station.calibration.recipes import load_recipe
        from station.cli.app import console
        from station.inspection.cycle import Inspector
        from station.inspection.models import load_detector_set
        from station.inspection.offline import group_offline
        from station.inspection.recipe_hooks import recipe_hooks
        from station.inspection.recorder import Recorder
        from station.storage.db import open_database

        if live and paths:
            raise StationError("give either --live or image paths, not both")
        if not live and not paths:
            raise StationError(
                "nothing to inspect", hint="add --live to run the cell, or give stored image paths"
            )
        rcp = load_recipe(recipe)
        rcp = with_shadow(rcp, shadow)  # --shadow overrides the recipe's retrain.shadow
        if live:
            from station.devices.pylon_emulator import check_sequence

            check_sequence(rcp, "inspect")  # an emulated camera plays the frames it was given
            _check_cell_before_live(rcp)
        groups = None if live else group_offline(paths, rcp)
        db = open_database(rcp.storage.resolved_database_url())
        recorder = Recorder(db, rcp)
        show = console.is_terminal if view is None else view
        try:
            if live:  # one live run per recipe and cell: refused before the models load
                recorder.hold_lock()
            detectors = load_detector_set(rcp, db)
            hooks = recipe_hooks(rcp, db, detectors)
            if live:
                summary = run_live_with_view(
                    rcp, detectors, recorder, count, pipelined, show,
                    world=_twin_line(rcp, db), hooks=hooks,
                )
            else:
                with Inspector(
                    rcp,
                    detectors,
                    recorder,
                    pipelined=pipelined,
                    on_event=_offline_printer(),
                    hooks=hooks,
                ) as insp:
                    summary = insp.run_offline(groups)
        finally:
            recorder.release_lock()
            db.dispose()
        _print_summary(summary)
        _exit_for(summary, len(groups) if groups is not None else None)


def _exit_for(summary: Any, offline_parts: int | None) -> None:
    """The run's exit: an operator fault, an early stop or faulted parts are not a success."""
    if summary.operator_fault is not None:
        raise typer.Exit(EXIT_OPERATOR)
    if summary.stopped_reason not in ("done", "stopped"):
        left = offline_parts - summary.parts if offline_parts is not None else 0
        raise StationError(
            f"inspection stopped after {summary.parts} part(s), {left} not inspected: "
            f"{summary.stopped_reason}"
        )
    if summary.counts["fault"]:
        raise StationError(
            f"{summary.counts['fault']} of {summary.parts} part(s) ended in a fault "
            "(each listed above with its reason, and stored as a reject)",
            hint="fix the cause, then inspect those parts again"
            if offline_parts is not None
            else "the line rejected those sheets; fix the cause, and judge them in the review "
            "queue (station review)",
        )


def _twin_line(rcp: Any, db: Any) -> Any:
    """The twin's line for a live run, going on from the recipe's last part: each run starting
    again at sheet 1 would show a retrained or shadow model the very sheets it learnt from."""
    from station.devices.factory import uses_twin
    from station.twin.world import TwinWorld

    return TwinWorld(rcp, sheets_before=db.last_sequence(rcp.name)) if uses_twin(rcp) else None


def _check_cell_before_live(rcp: Any) -> None:
    """Refuse a live run whose recipe leaves part of its region unseen, too coarse, out of
    focus or out of reach (`station recipe check` names each): no sheet may pass on shots that
    cannot resolve its smallest defect. On a real cell a refused cell calibration refuses the
    run, and one without hand-eye is said loudly."""
    from station.cli.app import console
    from station.cli.plan import coverage_camera
    from station.devices.factory import uses_twin
    from station.geometry.coverage import check

    real = not uses_twin(rcp)  # the twin's sheet map uses its exact camera
    model, described = coverage_camera(rcp, strict=real)
    if real and not getattr(model, "hand_eye", False):
        console.print(
            f"[bold yellow]warning:[/] camera model {escape(described)}: no hand-eye "
            "calibration, so the sheet map, the placement check and every mm/px rest on the lens "
            "data and robot.tcp_offset_mm (a mount 1 degree off moves the map about 10 mm); run "
            f"station calibrate-camera and calibrate-hand-eye --recipe {rcp.name}",
            highlight=False, soft_wrap=True)
    problems = check(rcp, model).problems
    if problems:
        more = f" (and {len(problems) - 1} more: station recipe check {rcp.name})"
        raise StationError(
            f"recipe {rcp.name}: {problems[0]}" + (more if len(problems) > 1 else ""),
            hint=f"station plan-poses --recipe {rcp.name} plans poses that see the region whole "
            "at the resolution it needs",
        )


def _offline_printer() -> Any:
    from station.cli.app import console
    from station.inspection.live_view import result_detail, verdict_text

    def on_event(event: Any) -> None:
        r = event.result
        if event.kind == "message" and event.level != "info" and event.text:  # e.g. alarms
            console.print(f"{event.level}: {escape(event.text)}", highlight=False, soft_wrap=True)
            return
        if event.kind != "part_finished" or r is None:
            return
        line = verdict_text(r.verdict.value)
        line.append(f"  part {r.sequence}  {r.line_part_id}  ", style="")
        line.append(result_detail(r), style="magenta" if r.verdict.value == "fault" else "dim")
        console.print(line, highlight=False, soft_wrap=True)

    return on_event


def run_live_with_view(
    rcp: Any,
    detectors: Any,
    recorder: Any,
    count: int | None,
    pipelined: bool = True,
    show: bool = True,
    world: Any = None,
    hooks: Any = (),
) -> Any:
    """Run the cell with the live view (or one line per part), Ctrl-C handling and the
    terminal operator prompt; returns the RunSummary. `world`: a TwinWorld to use (demo)."""
    from rich.live import Live

    from station.cli.app import console
    from station.devices.factory import open_devices
    from station.inspection.cycle import Inspector
    from station.inspection.live_view import LiveView

    stop = threading.Event()
    view = LiveView(
        f"station inspect: {rcp.name}",
        f"{'pipelined' if pipelined else 'sequential'} | thresholds {detectors.calibration_label}",
    )
    on_event = _live_printer(view, show)
    operator = _TerminalOperator()

    def on_sigint(_sig: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        view.stopping = True
        view.message("Ctrl-C: finishing the part in progress (again to abort)", "warning")
        if not show:
            console.print("stopping after the part in progress (Ctrl-C again to abort)")

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    try:
        with (
            open_devices(rcp, world=world) as devices,
            Inspector(
                rcp,
                detectors,
                recorder,
                devices,
                pipelined=pipelined,
                operator=operator,
                on_event=on_event,
                hooks=hooks,
            ) as insp,
        ):
            if show:
                with Live(
                    get_renderable=view.render, console=console, refresh_per_second=4
                ) as live:
                    operator.live, operator.world = live, devices.world
                    summary = insp.run_live(count=count, stop=stop)
                operator.live = None
            else:
                operator.world = devices.world
                summary = insp.run_live(count=count, stop=stop)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    return summary


def _live_printer(view: Any, show: bool) -> Callable[[Any], None]:
    """Feed the live view; without the screen, print one line per part and each message.
    A fault for the operator is not printed here: the terminal prompt shows it, or, with no
    one to resume, the summary's last lines (`_print_summary`)."""
    from station.cli.app import console
    from station.inspection.live_view import part_label, result_detail

    def on_event(event: Any) -> None:
        view.handle(event)
        if not show and event.kind in ("part_finished", "message"):
            if event.result is not None:
                r = event.result
                console.print(
                    f"part {part_label(r)}: {r.verdict.value} ({escape(result_detail(r))}) "
                    f"cycle {r.timings_ms.get('cycle', 0):.0f} ms",
                    highlight=False,
                    soft_wrap=True,  # one line per part, however long the reason
                )
            elif event.text:
                console.print(f"{event.level}: {escape(event.text)}", highlight=False)

    return on_event


class _TerminalOperator:
    """Asks the operator at the terminal to fix a fault (the live screen paused meanwhile);
    without a terminal, the answer is stop (the summary then says what to do)."""

    def __init__(self) -> None:
        self.live: Any = None  # the rich Live screen while it runs
        self.world: Any = None  # the simulated cell, whose faults the resume clears

    def __call__(self, fault: Any) -> bool:
        from station.cli.app import console

        if not sys.stdin.isatty():
            return False
        if self.live is not None:
            self.live.stop()
        console.print(f"[bold red]{escape(fault.message)}[/]", highlight=False)
        console.print(f"  {escape(fault.action)}", highlight=False)
        in_main = threading.current_thread() is threading.main_thread()
        # at the prompt the first Ctrl-C stops (the run's handler would only note it)
        previous = signal.signal(signal.SIGINT, signal.default_int_handler) if in_main else None
        try:
            answer = console.input("  press Enter to resume, or q then Enter (or Ctrl-C) to stop: ")
        except (EOFError, KeyboardInterrupt):
            answer = "q"
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)
        resume = answer.strip().lower() not in ("q", "quit", "stop")
        if resume and self.world is not None:
            self.world.operator_fixes()
            console.print("  simulated cell: the fault is cleared, as the operator would at the "
                          "cell", highlight=False)
        if self.live is not None:
            self.live.start()
        return resume


def _print_summary(summary: Any) -> None:
    from station.cli.app import console
    from station.inspection.results import TIMING_KEYS

    c = summary.counts
    console.print(
        f"[bold]{summary.parts} part(s)[/]: pass {c['pass']}, fail {c['fail']}, "
        f"fault {c['fault']} in {summary.elapsed_s:.1f} s "
        f"({summary.throughput_per_hour:.0f} parts/h)",
        highlight=False,
    )
    if summary.parts:
        mean = summary.mean_timings()
        console.print(
            "mean cycle ms: " + ", ".join(f"{k} {mean.get(k, 0):.0f}" for k in TIMING_KEYS),
            highlight=False,
        )
    if summary.operator_fault is not None:
        f = summary.operator_fault
        console.print(f"[bold red]stopped:[/] {escape(f.message)}", highlight=False, soft_wrap=True)
        # the run has ended: there is nothing to resume, only the command to start again
        console.print(
            f"  to do: {escape(f.after_stop())}; then run the command again",
            highlight=False,
            soft_wrap=True,
        )
