"""`station sim ...`: simulators for integrators (a fake UR controller that ur_rtde talks to)."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from station.errors import StationError

if TYPE_CHECKING:
    from station.recipe import LineIOConfig
    from station.twin.fake_ur import FakeURController
    from station.twin.fake_ur.plc import SimPLC

CONSOLE_HELP = (
    "commands: part on|off, pstop, unlock, safeguard, reset, estop, release, power on, drop, "
    "cut, restore, "
    "silent on|off, status, help"
)


def _console_command(fake: FakeURController, line: str, part_input: int) -> str:
    """One operator command typed on the server's stdin (fault injection and I/O)."""
    cmd = line.strip().lower()
    actions = {
        "part on": lambda: fake.set_digital_input(part_input, True),
        "part off": lambda: fake.set_digital_input(part_input, False),
        "pstop": fake.protective_stop,
        "unlock": fake.unlock_protective_stop,
        "safeguard": fake.safeguard_stop,
        "reset": fake.reset_safeguard,
        "estop": fake.emergency_stop,
        "release": fake.release_emergency_stop,
        "power on": lambda: (fake.model.power_on(), fake.model.brake_release()),
        "drop": fake.drop_connections,
        "cut": fake.disconnect_network,
        "restore": fake.reconnect_network,
        "silent on": lambda: fake.go_silent(True),
        "silent off": lambda: fake.go_silent(False),
    }
    if cmd in actions:
        answer = actions[cmd]()
        if isinstance(answer, str):
            return answer  # the controller's own reply, e.g. to unlock
    elif cmd != "status":
        return CONSOLE_HELP
    pose = ", ".join(f"{v:.4f}" for v in fake.tcp_pose)
    return (
        f"robot {fake.robot_mode}, safety {fake.safety_mode}, program "
        f"{'running' if fake.program_running else 'stopped'}, TCP [{pose}], "
        f"DI{part_input}={int(fake.digital_input(part_input))}, clients {fake.connection_count}"
    )


def _plc_line(
    recipe: str | None, part_input: int, plc: bool, log: Path | None
) -> LineIOConfig | None:
    """The simulated PLC's signals (the recipe's line_io when given, read and checked even
    without a PLC), its log checked writable: before the server listens. None: no PLC."""
    from station.calibration.recipes import load_recipe
    from station.cli.app import console
    from station.files import writing
    from station.recipe import LineIOConfig

    line = load_recipe(recipe).line_io if recipe else LineIOConfig(part_present_input=part_input)
    if not plc:
        if recipe or log:
            console.print("[yellow]note:[/] --recipe and --plc-log are for the simulated PLC; "
                          "give --part-every SECONDS to run it", highlight=False)
        return None
    if line.result_valid_output is None:
        raise StationError(
            "the simulated PLC needs a RESULT_VALID output",
            "set line_io.result_valid_output in the recipe, or run without --part-every",
        )
    if log is not None:
        with writing(f"PLC log {log}"), log.open("a", encoding="utf-8"):
            pass  # appended to from the PLC's thread
    return line


def _start_plc(
    fake: FakeURController, line: LineIOConfig, every_s: float, hold_s: float, log: Path | None
) -> SimPLC:
    """The simulated PLC on the fake controller's I/O (README "Line contract")."""
    from station.cli.app import console
    from station.twin.fake_ur.plc import Disposition, PlcConfig, SimPLC

    cfg = PlcConfig.from_line_io(line, part_every_s=every_s, hold_s=hold_s)

    def show(d: Disposition) -> None:
        why = f" ({d.reason})" if d.reason else ""
        console.print(f"PLC sheet {d.sheet}: {d.route}{why}", highlight=False)

    plc = SimPLC(fake.model, cfg, log_path=log, on_disposition=show)
    plc.start()
    beat = f"DO{cfg.heartbeat_output}" if cfg.heartbeat_output is not None else "none"
    console.print(
        f"PLC: a sheet every {every_s:g} s on DI{cfg.part_input}; RESULT_VALID "
        f"DO{cfg.result_valid_output} within {cfg.result_timeout_s:g} s, heartbeat {beat}, "
        f"reject DO{cfg.reject_output}",
        highlight=False,
    )
    return plc


def _start_fake(host: str, speed_scale: float, verbose: bool) -> FakeURController:
    """Start the fake controller on `host` (logging its protocol traffic when `verbose`); a
    port in use or a foreign address is one line."""
    import logging

    from station.twin.fake_ur import FakeURController

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
    )
    fake = FakeURController(host, speed_scale=speed_scale)
    try:
        fake.start()
    except OSError as exc:
        cause = exc.__cause__ or exc
        in_use = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
        raise StationError(
            f"fake UR controller cannot listen on {host}: {cause}",
            "stop the other server on these ports or use another address, e.g. 127.0.0.2"
            if in_use
            else "give --host an address of this machine, e.g. 127.0.0.1",
        ) from None
    return fake


def _console_is_ours() -> bool:
    """Whether typed commands can be read: stdin open, and not a terminal this process is in
    the background of (`station sim robot-server &`: reading would stop the whole server)."""
    if sys.stdin is None or sys.stdin.closed:
        return False
    try:
        fd = sys.stdin.fileno()
        return not os.isatty(fd) or os.tcgetpgrp(fd) == os.getpgrp()
    except (OSError, ValueError):
        return False


def _read_console(fake: FakeURController, part_input: int) -> None:
    """Answer the operator's commands typed on stdin (runs in a daemon thread)."""
    from station.cli.app import console

    for line in sys.stdin:
        if line.strip():
            console.print(_console_command(fake, line, part_input), highlight=False)


def _serve(fake: FakeURController, plc: SimPLC | None, duration: float) -> None:
    """Run until `duration` seconds have passed (0: until Ctrl-C), then stop PLC and server."""
    from station.cli.app import console

    t0 = time.monotonic()
    try:
        while duration <= 0 or time.monotonic() - t0 < duration:
            if plc is not None and not plc.is_alive():  # it stopped by itself: said below
                break
            time.sleep(0.02)
    except KeyboardInterrupt:
        pass
    finally:
        if plc is not None:
            plc.stop()
            n = len(plc.dispositions)
            passed = sum(d.route == "passed" for d in plc.dispositions)
            console.print(f"PLC: {n} sheet(s) routed, {passed} passed, {n - passed} rejected")
        fake.stop()
        console.print("fake UR controller stopped")
    if plc is not None and (failed := plc.failure) is not None:
        raise StationError(f"the simulated PLC stopped: {failed.message}", hint=failed.hint)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Simulated devices for trying the real drivers.", no_args_is_help=True)
    app.add_typer(group, name="sim")

    @group.command("robot-server")
    def robot_server(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        speed_scale: float = typer.Option(
            1.0, "--speed-scale", min=0.01, help="Simulated motion speed (2 = twice real time)."
        ),
        part_input: int = typer.Option(
            0, "--part-input", min=0, max=7, help="Standard digital input of the part sensor."
        ),
        part_every: float = typer.Option(
            0.0,
            "--part-every",
            min=0.0,
            help="Seconds between sheets the simulated PLC presents (0: no PLC).",
        ),
        part_hold: float = typer.Option(
            1.0, "--part-hold", min=0.0, help="Seconds a sheet stays at least (no station: 1 s)."
        ),
        recipe: str | None = typer.Option(
            None, "--recipe", "-r", help="Take the PLC's signals and timings from its line_io."
        ),
        plc_log: Path | None = typer.Option(
            None, "--plc-log", help="Append each sheet's disposition to this JSONL file."
        ),
        duration: float = typer.Option(
            0.0, "--duration", min=0.0, help="Stop after this many seconds (0: until Ctrl-C)."
        ),
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Log protocol traffic."),
    ) -> None:
        """Run a fake UR5 controller (RTDE 30004, dashboard 29999, script 30001-30003).

        Point a recipe's robot.host at HOST, set its drivers to ur_rtde, and ur_rtde drives it.

        Any 127.0.0.x address is local on Linux, so several servers can run at once. Type
        commands on stdin to inject faults (`help` lists them).
        """
        from station.cli.app import console

        line = _plc_line(recipe, part_input, part_every > 0, plc_log)
        fake = _start_fake(host, speed_scale, verbose)
        console.print(
            f"[green]fake UR5 controller[/] on {host} (RTDE 30004, dashboard 29999, "
            f"script 30001-30003); Ctrl-C stops it"
        )
        if _console_is_ours():
            threading.Thread(
                target=_read_console, args=(fake, part_input), name="sim-console", daemon=True
            ).start()
        plc = None
        if line is not None:
            plc = _start_plc(fake, line, part_every, part_hold, plc_log)
        _serve(fake, plc, duration)

    @group.command("camera-images")
    def camera_images(
        recipe: str = typer.Option(
            ..., "--recipe", "-r", help="Recipe with camera.emulator_images."
        ),
        count: int = typer.Option(5, "--count", "-n", min=1, help="Parts (sheets) to render."),
        seed: int | None = typer.Option(None, "--seed", min=0, help="First twin seed."),
        defective: bool | None = typer.Option(
            None, "--defective/--good", help="Force defective or good sheets (default: the rate)."
        ),
        use: str = typer.Option(
            "inspect",
            "--for",
            help="The command that plays them: inspect (adds the reference card's shots) or "
            "capture.",
        ),
    ) -> None:
        """Render twin shots into the folder the pylon camera emulator plays."""
        _camera_images(recipe, count, seed, defective, use)


def _camera_images(
    recipe: str, count: int, seed: int | None, defective: bool | None, use: str
) -> None:
    from station.calibration.recipes import load_recipe
    from station.cli.app import console
    from station.devices.pylon_emulator import USES, prepare_twin_images
    from station.recipe import CARD

    if use not in USES:
        raise StationError(f"--for {use!r} is not known", hint=f"use {' or '.join(USES)}")
    rcp = load_recipe(recipe)
    shots = prepare_twin_images(rcp, count, first_seed=seed, defective=defective, use=use)
    folder = Path(shots[0].image_path).parent
    cards = sum(s.pose == CARD for s in shots)
    note = f", {cards} of the reference card" if cards else ""
    console.print(
        f"[green]wrote[/] {len(shots)} shots of {count} parts{note} for station {use} on "
        f"the pylon emulator -> {folder} (set PYLON_CAMEMU=1 so the emulated camera appears)"
    )
