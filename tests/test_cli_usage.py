"""Usage errors from the installed `station` command: one line, exit 2, no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

STATION = Path(sys.executable).with_name("station")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["check-recipe"], "No such command 'check-recipe'"),
        (["evaluate", "--dataset", ".", "--no-such-flag"], "No such option: --no-such-flag"),
        (["evaluate"], "Missing option '--dataset'"),
    ],
)
@pytest.mark.slow
def test_usage_errors_are_short(argv: list[str], says: str) -> None:
    exe = str(STATION) if STATION.exists() else shutil.which("station")
    assert exe, "the station entry point is not installed"
    run = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert says in run.stderr
    assert "Traceback" not in run.stderr + run.stdout


@pytest.mark.slow
def test_sigterm_ends_a_command_cleanly() -> None:
    """systemd stops the station with SIGTERM: `finally` blocks run, exit 143, no traceback."""
    import os
    import signal
    import time

    exe = str(STATION) if STATION.exists() else shutil.which("station")
    host = f"127.{60 + os.getpid() % 150}.9.9"
    proc = subprocess.Popen(
        [exe, "sim", "robot-server", "--host", host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "fake UR5 controller" in proc.stdout.readline()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in out + err


def test_an_opencv_without_needed_functions_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """OpenCV 5.0 lacks undistortPointsIter: every command refuses at start, naming the fix."""
    import cv2

    from station.cli.app import main

    monkeypatch.delattr(cv2, "undistortPointsIter")
    with pytest.raises(SystemExit) as exit_info:
        main(["recipe", "check", "glassfiber"])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err
    assert "lacks undistortPointsIter" in err and "opencv-python-headless>=4.10,<5" in err
    assert "Traceback" not in err


def test_command_help_is_reflowed() -> None:
    """Each command's help paragraph is one line, so it wraps at the terminal's width; the
    list of commands shows a one-line summary."""
    from typer.testing import CliRunner

    from station.cli.app import app

    def commands(group):  # type: ignore[no-untyped-def]
        yield from group.registered_commands
        for sub in group.registered_groups:
            yield from commands(sub.typer_instance)

    infos = list(commands(app))
    assert len(infos) > 15
    for info in infos:
        assert info.help, info.callback
        for paragraph in info.help.split("\n\n"):
            assert "\n" not in paragraph and "  " not in paragraph, info.help
    wide = CliRunner().invoke(app, ["retrain", "--help"], env={"COLUMNS": "200"})
    assert wide.exit_code == 0
    assert "false rejects (the recipe's retrain: rule; PatchCore:" in wide.output


def test_database_failures_are_one_line_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`station db upgrade --url`: a server nobody answers on, a path SQLite cannot open and a
    file that is no database each say so on one line, then the fix."""
    pytest.importorskip("psycopg")
    from station.cli.app import main

    (tmp_path / "folder.db").mkdir()
    (tmp_path / "junk.db").write_bytes(b"no SQLite header here " * 50)
    cases = [
        ("postgresql+psycopg://u:secret@127.0.0.1:1/x",
         "error: cannot reach database postgresql+psycopg://u:***@127.0.0.1:1/x: ",
         "  hint: check that the database server is running"),
        (f"sqlite:///{tmp_path / 'folder.db'}", "unable to open database file",
         f"  hint: check that the folder {tmp_path} exists and this user may write in it"),
        (f"sqlite:///{tmp_path / 'junk.db'}", "file is not a database",
         f"  hint: {tmp_path / 'junk.db'} is not a SQLite database: move it away"),
    ]  # fmt: skip
    for url, says, hint in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(["db", "upgrade", "--url", url])
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 2 and says in lines[0] and lines[1].startswith(hint), lines
        assert "upgrade" not in lines[0] and "secret" not in lines[0]


def _commands(group, path=()):  # noqa: ANN001, ANN202
    import click

    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield " ".join((*path, name)), cmd


def test_one_spelling_for_each_option_across_commands() -> None:
    """The database URL, the image folder and the batch size answer to the same flags in every
    command that takes them (the older spellings stay as aliases)."""
    import typer.main

    from station.cli.app import app

    same = ({"--db-url", "--database", "--url"}, {"--data", "--dataset"},
            {"--batch-size", "--batch"})  # fmt: skip
    wanted = {"--db-url": same[0], "--data": same[1], "--dataset": same[1],
              "--batch-size": same[2]}  # fmt: skip
    seen = 0
    for name, cmd in _commands(typer.main.get_command(app)):
        flags = {f for p in cmd.params for f in p.opts}
        for flag, family in wanted.items():
            if flags & family:
                seen += 1
                assert flag in flags, f"station {name}: {sorted(flags & family)} but no {flag}"
    assert seen >= 12


def test_every_threshold_policy_and_its_parameter_is_on_the_command_line() -> None:
    """The policy registry is the only list: a new rule shows in --policy's help, and its
    parameter needs its own flag."""
    import typer.main

    from station.calibration.policies import RULES
    from station.cli.app import app

    cmd = typer.main.get_command(app).commands["calibrate-threshold"]
    flags = {f for p in cmd.params for f in p.opts}
    policy = next(p for p in cmd.params if "--policy" in p.opts)
    for rule in RULES.values():
        assert rule.name in policy.help
        if rule.param is not None:
            assert "--" + rule.param.replace("_", "-") in flags, rule.name
