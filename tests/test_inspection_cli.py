"""`station inspect` end to end: a real PatchCore trained on twin sheets, a real calibration,
offline and live runs on the twin, Ctrl-C, and the clear errors."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sqlalchemy import select
from test_inspection_support import database, run_cli, small_recipe

from station.cli.app import main
from station.imaging import write_png
from station.recipe import load_recipe
from station.storage.models import Part, Verdict
from station.twin import render_part_shots

REPO = Path(__file__).resolve().parents[1]
# One line per part: live with --no-view, and offline (README "Live inspection and faults")
LIVE_LINE = r"part \d+: (pass|fail) \(patchcore \d+\.\d+x\) cycle \d+ ms"
OFFLINE_LINE = r"(PASS|FAIL)  part \d+  \S+/p\d{6}  patchcore \d+\.\d+x"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A station home with a trained PatchCore, a labelled twin dataset and a calibration."""
    import shutil

    from station.detectors.training import train_and_save

    home = tmp_path_factory.mktemp("cli") / "home"
    shutil.copytree(REPO / "recipes", home / "recipes")
    old = os.environ.get("STATION_HOME")
    os.environ["STATION_HOME"] = str(home)
    try:
        recipe = small_recipe(
            home,
            preprocess__size=[64, 64],
            detectors=[{"name": "patchcore", "device": "cpu", "params": {"coreset_ratio": 0.5}}],
            # trained without `station train`: no material model (tests/test_material_check.py)
            monitoring={"material_check": {"enabled": False}},
            # a sheet the three views nearly cover, so a defective sheet's defect is in a shot
            sheet__width_mm=36.0,
            sheet__height_mm=18.0,
        )
        train = [img for s in range(8) for _, img, _ in render_part_shots(recipe, 100 + s, False)]
        from station.imaging import preprocess

        train_and_save(
            recipe,
            recipe.detectors[0],
            [],
            [preprocess(i, recipe.preprocess) for i in train],
            train_hash="twin-seeds-100-102",
        )
        ds = home / "labelled"
        good = [render_part_shots(recipe, seed, False) for seed in (201, 202, 203)]
        seen = (render_part_shots(recipe, seed, True) for seed in range(300, 400))  # 20+ px
        bad = [shots for shots in seen if max((m > 0).sum() for _, _, m in shots) >= 20][:3]
        assert len(bad) == 3, "no three twin sheets with a defect in view among seeds 300-399"
        for seq, shots in enumerate([*good, *bad], start=1):
            folder = "defect" if seq > 3 else "good"
            for pose, img, _ in shots:
                write_png(ds / "test" / folder / f"p{seq:06d}_{pose}.png", img)
        argv = ["calibrate-threshold", "--recipe", "small", "--dataset", str(ds)]
        argv += ["--resamples", "100", "--oob-resamples", "0"]
        try:
            main(argv)
        except SystemExit as exc:
            assert not exc.code, f"calibrate-threshold exited {exc.code}"
        yield home
    finally:
        if old is None:
            os.environ.pop("STATION_HOME", None)
        else:
            os.environ["STATION_HOME"] = old


def _parts(home: Path) -> list[Part]:
    db = database(load_recipe("small"))
    with db.session() as s:
        rows = s.scalars(select(Part).order_by(Part.sequence)).all()
        for r in rows:
            _ = [sh.detections for sh in r.shots]
    db.dispose()
    return list(rows)


@pytest.mark.slow
def test_offline_on_stored_images(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = len(_parts(home))
    code, out = run_cli(["inspect", "--recipe", "small", str(home / "labelled" / "test")], capsys)
    assert code == 0, out
    assert "6 part(s)" in out and "patchcore" in out
    assert len(re.findall(rf"^{OFFLINE_LINE}$", out, re.M)) == 6, out
    rows = _parts(home)[before:]
    assert len(rows) == 6 and all(r.mode == "offline" for r in rows)
    assert {r.ground_truth for r in rows} == {"good", "defect"}
    assert all(r.calibration_id is not None for r in rows)  # linked to the calibration record
    for r in rows:
        assert r.verdict in (Verdict.PASS, Verdict.FAIL) and len(r.shots) == 3
        assert all(len(s.detections) == 1 for s in r.shots)
    # zero_miss policy on these same parts: every defective one is rejected, the good pass
    verdicts = {gt: {r.verdict for r in rows if r.ground_truth == gt} for gt in ("good", "defect")}
    assert verdicts == {"good": {Verdict.PASS}, "defect": {Verdict.FAIL}}


@pytest.mark.slow
def test_live_count(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = len(_parts(home))
    code, out = run_cli(["inspect", "--live", "--recipe", "small", "-n", "2", "--no-view"], capsys)
    assert code == 0, out
    assert re.search(rf"^{LIVE_LINE}$", out, re.M), out
    assert "2 part(s)" in out and "mean cycle ms" in out
    # what calibration said of its own set is said again when the thresholds go live
    assert re.search(r"^warning: thresholds \S+: only 3 defective", out, re.M), out
    rows = _parts(home)[before:]
    assert [r.mode for r in rows] == ["live", "live"]
    assert all(r.timings_ms["cycle"] > 0 for r in rows)
    # a second run's line goes on after the recipe's last part, not back to sheet 1 (which
    # would show a retrained or shadow model the sheets it learnt from)
    code, out = run_cli(["inspect", "--live", "--recipe", "small", "-n", "1", "--no-view"], capsys)
    assert code == 0, out
    (again,) = _parts(home)[before + 2 :]
    seed = load_recipe("small").twin.seed
    assert [r.line_part_id for r in [*rows, again]] == [
        f"TWIN-{seed}-{again.sequence - n:06d}" for n in (2, 1, 0)
    ]


@pytest.mark.slow
def test_imaging_changed_since_training(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another exposure is said at the start; another scale (a lens of 10 mm for 12) refused."""
    path = home / "recipes" / "small.yaml"
    kept = path.read_text()
    data = yaml.safe_load(kept)
    try:
        data["camera"]["exposure_us"] = data["camera"].get("exposure_us", 8000.0) / 2
        path.write_text(yaml.safe_dump(data))
        code, out = run_cli(["inspect", "--live", "-r", "small", "-n", "1", "--no-view"], capsys)
        assert code == 0, out
        said = r"^warning: model patchcore-\S+ was trained under other\s+imaging:\s+camera"
        assert re.search(said + r"\.exposure_us", out, re.M), out  # (the console wraps it)
        data["camera"]["lens"]["focal_length_mm"] = 10.0
        path.write_text(yaml.safe_dump(data))
        code, out = run_cli(["inspect", "--live", "-r", "small", "-n", "1", "--no-view"], capsys)
        assert code == 2 and "mm per detector pixel" in out and "Traceback" not in out, out
        assert "put the poses and lens back" in out
    finally:
        path.write_text(kept)


def test_a_live_run_on_poses_that_cannot_resolve_the_region_is_refused(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Poses raised by hand see the region whole, but out of focus and coarser than its
    smallest defect needs: `recipe check` refuses the recipe, and so does a live run (it used
    to warn and pass)."""
    path = home / "recipes" / "small.yaml"
    kept = path.read_text()
    data = yaml.safe_load(kept)
    try:
        for pose in data["robot"]["poses"]:
            pose["position_mm"][2] = 450.0
        path.write_text(yaml.safe_dump(data))
        code, out = run_cli(["inspect", "--live", "-r", "small", "-n", "1", "--no-view"], capsys)
        assert code == 2 and "Traceback" not in out, out
        name = data["name"]
        assert f"error: recipe {name}: " in out and f"plan-poses --recipe {name}" in out, out
        assert "depth of field" in out or "mm/px" in out, out
    finally:
        path.write_text(kept)
    assert "parts" not in out.split("error:")[0]  # refused before any part


def test_a_real_cell_without_hand_eye_is_said_and_a_stale_calibration_refused(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real drivers on the nominal camera model: said loudly before the run. A calibration
    solved before robot.tcp_offset_mm changed: the live run is refused (the coverage check
    fell back to nominal, and the sheet map would have used it)."""
    from station.cellcal import geometry as geo
    from station.cellcal import store
    from station.cellcal.views import nominal_mount
    from station.cli.inspect import _check_cell_before_live
    from station.errors import CellCalibrationError

    recipe = load_recipe("glassfiber-emulated")
    _check_cell_before_live(recipe)
    said = " ".join(capsys.readouterr().out.split())
    assert "warning: camera model nominal" in said and "no hand-eye calibration" in said, said
    model = store.nominal_model(recipe)
    moved = nominal_mount(recipe) @ geo.from_pose((0.0, 0.0, 3.0), (0.0, 0.0, 0.0))
    store.write(store.cell_path(recipe), {
        "camera_serial": None,
        "camera": {"date": store.now(), "image_size": [recipe.camera.width, recipe.camera.height],
                   "matrix": model.matrix.tolist(),
                   "distortion": dict.fromkeys(("k1", "k2", "p1", "p2", "k3"), 0.0)},
        "hand_eye": {"date": store.now(), "camera_to_flange": geo.as_dict(moved),
                     "nominal_mount": geo.as_dict(moved), "board_to_base": geo.as_dict(np.eye(4))},
    })
    with pytest.raises(CellCalibrationError, match="another robot.tcp_offset_mm"):
        _check_cell_before_live(recipe)


@pytest.mark.slow
def test_ctrl_c_finishes_part_and_exits_cleanly(home: Path) -> None:
    env = {**os.environ, "STATION_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "station", "inspect", "--live", "-r", "small", "--no-view"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("part "):
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert "stopping after the part in progress" in out
    assert "part(s): pass" in out
    rows = _parts(home)
    assert all(r.verdict is not Verdict.PENDING for r in rows)


def test_the_readme_shows_the_part_lines_inspect_prints() -> None:
    """The README's examples of a part's line, live (--no-view) and offline, are lines the
    tests above see printed (it once gave the live line for offline runs too)."""
    text = (REPO / "README.md").read_text()
    start = text.index("With `--no-view`")
    paragraph = text[start : text.index("\n\n", start)]
    examples = re.findall(r"`([^`]*part \d+[^`]*)`", paragraph.replace("\n", " "))
    assert re.fullmatch(r"part \d+: fault \(.*\) cycle \d+ ms", examples[0]), examples
    assert re.fullmatch(OFFLINE_LINE, examples[1]), examples


def test_clear_errors(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(["inspect", "--recipe", "small"], capsys)
    assert code == 2 and "nothing to inspect" in out and "Traceback" not in out
    code, out = run_cli(["inspect", "--recipe", "small", "--live", str(home)], capsys)
    assert code == 2 and "not both" in out
    code, out = run_cli(["inspect", "--recipe", "small", str(home / "missing.png")], capsys)
    assert code == 2 and "missing.png does not exist" in out
    # the shipped recipe has no trained model in this home
    code, out = run_cli(["inspect", "--recipe", "glassfiber", str(home / "labelled")], capsys)
    assert code == 2 and "station train" in out and "Traceback" not in out


LINK_OPS_BEFORE_HOME = 2  # the twin's link counts: robot connect, line open, then the move home


@contextlib.contextmanager
def _twin_faults(home: Path, faults: dict[str, Any]) -> Iterator[None]:
    """The `small` recipe with these twin faults while the block runs."""
    path = home / "recipes" / "small.yaml"
    original = path.read_text()
    faulted = yaml.safe_load(original)
    faulted["twin"]["params"] = {"faults": faults}
    path.write_text(yaml.safe_dump(faulted))
    try:
        yield
    finally:
        path.write_text(original)


@pytest.mark.slow
def test_exit_codes_say_when_the_run_did_not_end_well(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A protective stop with no operator at a terminal: the run stops and exits 3.
    with _twin_faults(home, {"protective_stop": {"after": 4}}):
        argv = ["inspect", "--live", "--recipe", "small", "-n", "3", "--no-view"]
        code, out = run_cli(argv, capsys)
    assert code == 3, out
    assert "stopped:" in out and "Traceback" not in out
    # the run has ended: the last line says to start it again, not to resume
    flat = " ".join(out.split())  # the console wraps long lines
    assert "to do: clear the stop on the teach pendant and check the cell; then run the command " \
        "again" in flat and "then resume; then run" not in flat, out
    _said_once_stop_reason_last(out, "robot protective/emergency stop: robot entered protective")
    # Offline, one unreadable image among good ones: every part is decided, the exit code is 2.
    folder = home / "corrupt"
    folder.mkdir()
    for pose, img, _ in render_part_shots(load_recipe("small"), 300, False):
        write_png(folder / f"p000001_{pose}.png", img)
    (folder / "p000002_left.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_png(folder / "p000003_left.png", np.zeros((20, 30), np.uint8))
    code, out = run_cli(["inspect", "--recipe", "small", str(folder)], capsys)
    assert code == 2, out
    assert "3 part(s)" in out and "2 of 3 part(s) ended in a fault" in out
    assert "p000003_left.png is 30 x 20 px; recipe glassfiber's camera takes 64 x 48" in out
    assert "Traceback" not in out


def _said_once_stop_reason_last(out: str, reason: str) -> None:
    """The stop reason is said on its part's line and at the end with its fix, the last lines;
    no `error:` line repeats it (it did, twice)."""
    flat = " ".join(out.split())  # the console wraps long lines
    assert flat.count(reason) == 2 and re.search(rf"part \d+: fault \({re.escape(reason)}", flat)
    last = flat[flat.rindex("stopped: ") :]
    assert last.startswith(f"stopped: {reason}"), out
    assert re.fullmatch(r"stopped: .* to do: .*; then run the command again", last), out


@pytest.mark.slow
def test_a_lost_link_stops_with_what_can_be_done_without_a_resume(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The link drops while the second sheet is decided: it is held, and with --no-view and no
    # terminal there is no one to resume: the run stops (exit 3) and says what to do instead.
    with _twin_faults(home, {"link_lost": {"after": 12}}):
        argv = ["inspect", "--live", "--recipe", "small", "-n", "3", "--no-view"]
        code, out = run_cli(argv, capsys)
    assert code == 3 and "Traceback" not in out, out
    _said_once_stop_reason_last(out, "line I/O: line I/O (simulated, on the robot controller)")
    flat = " ".join(out.split())
    held = r"error: part \d+ is still held on the line \(fault\): divert it by hand"
    assert re.search(held, flat), out  # said once, above the stop reason
    assert "resume" not in flat, out  # nothing to resume: the run has ended
    todo = "to do: restore the controller link / line I/O; then run the command again"
    assert flat.endswith(todo), out


@pytest.mark.slow
def test_a_lost_link_before_the_first_sheet_stops_for_the_operator(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The link drops at the first move home, before any sheet: the run stops for the operator
    # (exit 3, as a stop during a part), not with an error (it exited 2), and no part is made.
    before = len(_parts(home))
    with _twin_faults(home, {"link_lost": {"after": LINK_OPS_BEFORE_HOME}}):
        argv = ["inspect", "--live", "--recipe", "small", "-n", "2", "--no-view"]
        code, out = run_cli(argv, capsys)
    flat = " ".join(out.split())
    assert code == 3 and "Traceback" not in out, out
    assert re.search(r"stopped: robot: lost connection to the robot .* while moving to 'home'",
                     flat), out
    assert flat.endswith("then run the command again") and len(_parts(home)) == before, out


def test_a_fault_line_shows_the_reason_not_the_scores(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The second shot of the first sheet times out (three tries): the first shot was scored,
    # but the line must say why the sheet is a fault, not show a score below threshold.
    with _twin_faults(home, {"camera_timeout": {"after": 1, "count": 3}}):
        argv = ["inspect", "--live", "--recipe", "small", "-n", "2", "--no-view"]
        code, out = run_cli(argv, capsys)
    assert code == 2 and "Traceback" not in out, out
    (line,) = [x for x in out.splitlines() if re.match(r"part \d+: fault", x)]
    assert re.match(r"part \d+: fault \(camera: .*no frame within .*\) cycle \d+ ms$", line), line
    assert "patchcore" not in line
    assert re.search(r"^part \d+: (pass|fail) \(patchcore \d+\.\d+x\) cycle", out, re.M)


@pytest.mark.slow
def test_offline_parts_follow_the_capture_layout(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A sheet's shots are filed by their own label: one sheet, one part, defective.
    # A sheet that lacks a pose is never passed.
    root = home / "split" / "test"
    recipe = load_recipe("small")
    shots = render_part_shots(recipe, 400, True)
    for k, (pose, img, _) in enumerate(shots):
        write_png(root / ("defect" if k == 2 else "good") / f"p000001_{pose}.png", img)
    for pose, img, _ in shots[:2]:
        write_png(root / "good" / f"p000002_{pose}.png", img)
    before = len(_parts(home))
    code, out = run_cli(["inspect", "--recipe", "small", str(root)], capsys)
    assert code == 2 and "2 part(s)" in out, out
    whole, partial = _parts(home)[before:]
    assert whole.ground_truth == "defect" and len(whole.shots) == 3
    assert whole.verdict in (Verdict.PASS, Verdict.FAIL)
    assert partial.verdict is Verdict.FAULT and "no image of pose(s) right" in partial.reason
    assert len(partial.shots) == 2  # what was there is stored


@pytest.mark.slow
def test_second_live_run_on_a_recipe_exits_2_naming_the_lock(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23: a second live run marked the first run's parts interrupted mid-part."""
    env = {**os.environ, "STATION_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "station", "inspect", "--live", "-r", "small", "--no-view"]
    first = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines = [first.stdout.readline()]
        while lines[-1] and not lines[-1].startswith("part "):
            lines.append(first.stdout.readline())
        assert lines[-1], "".join(lines)
        code, out = run_cli(["inspect", "--live", "-r", "small", "-n", "1", "--no-view"], capsys)
        first.send_signal(signal.SIGINT)
        rest, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert code == 2, out
    lock = load_recipe("small").data_dir / "live.lock"
    # the small recipe's poses leave most of its region unseen: said first, one line each
    warned = [line for line in out.splitlines(keepends=True) if line.startswith("warning: ")]
    out = out[len("".join(warned)) :]
    assert out.startswith("error: ") and out.count("error:") == 1 and "Traceback" not in out
    assert str(lock) in out and f"PID {first.pid}" in out, out
    assert first.returncode == 0, "".join(lines) + rest
    assert "recovered" not in rest and Verdict.INTERRUPTED not in {r.verdict for r in _parts(home)}


def test_the_terminal_prompt_on_the_simulated_cell(
    station_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Enter resumes and, on the twin (no pendant), clears what the operator would fix at the
    cell, keeping faults not fired yet; Ctrl-C at the prompt stops at once (the run's own
    handler only notes a first Ctrl-C)."""
    import sys

    from station.cli import inspect as cli_inspect
    from station.cli.app import console
    from station.inspection.faults import Fault, Policy
    from station.recipe import load_recipe
    from station.twin.world import TwinWorld

    world = TwinWorld(load_recipe("glassfiber"))
    world.inject_fault("protective_stop", after=0)
    world.inject_fault("camera_timeout", after=5)
    world.protective_stop, world.link_up = True, False
    fault = Fault("protective_stop", "robot protective/emergency stop: x", "clear it, then resume",
                  Policy.OPERATOR)  # fmt: skip
    op = cli_inspect._TerminalOperator()
    op.world = world
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(console, "input", lambda _prompt: "")
    assert op(fault) is True
    assert (world.protective_stop, world.link_up) == (False, True)
    assert list(world.faults) == ["camera_timeout"]

    def ctrl_c(_prompt: str) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(console, "input", ctrl_c)
    world.protective_stop = True
    assert op(fault) is False and world.protective_stop is True
