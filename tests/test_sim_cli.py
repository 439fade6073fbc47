"""`station sim camera-images`: twin shots rendered for the pylon camera emulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from station.recipe import load_recipe


@pytest.mark.slow
def test_camera_images_fill_the_emulator_folder(station_home: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "station", "sim", "camera-images", "-r", "glassfiber-emulated",
         "-n", "2", "--defective"],
        capture_output=True, text=True, timeout=180,
        env={"STATION_HOME": str(station_home), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    assert "2 of the reference card for station inspect" in out.stdout  # --for inspect
    folder = station_home / "data" / "glassfiber-emulated" / "emulator"
    files = sorted(folder.glob("*.png"))
    poses = [f"{p.name}.png" for p in load_recipe("glassfiber-emulated").robot.poses]
    assert [f.name.split("_", 2)[-1] for f in files] == [*poses, "card.png"] * 2
    image = cv2.imread(str(files[0]), cv2.IMREAD_UNCHANGED)
    assert image.shape == (512, 640)  # the recipe's camera size: the emulator must not crop
    masks = sorted((folder.parent / "emulator-masks").glob("*.png"))
    assert len(masks) == len(files) and any(cv2.imread(str(m), 0).max() == 255 for m in masks)


def test_a_negative_seed_is_a_usage_error(station_home: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from station.cli.app import main

    with pytest.raises(SystemExit) as ei:
        main(["sim", "camera-images", "-r", "glassfiber-emulated", "-n", "1", "--seed", "-1"])
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "Traceback" not in err
    assert not (station_home / "data").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--recipe", "nosuch"], "nosuch.yaml: file not found"),
        (["--part-every", "0.5", "--plc-log", "{home}/recipes/glassfiber.yaml/x.jsonl"],
         "cannot write PLC log {home}/recipes/glassfiber.yaml/x.jsonl: "
         "{home}/recipes/glassfiber.yaml is a file, not a folder"),
    ],
)
def test_robot_server_refuses_a_bad_recipe_or_plc_log_before_it_listens(
    station_home: Path, capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    """`--recipe nosuch` without --part-every was never read (exit 0); a --plc-log that
    cannot be written killed the PLC's thread with a traceback (exit 0)."""
    from station.cli.app import main

    host = f"127.{40 + os.getpid() % 200}.19.1"
    argv = [a.format(home=station_home) for a in args]
    with pytest.raises(SystemExit) as ei:
        main(["sim", "robot-server", "--host", host, "--duration", "1", *argv])
    assert ei.value.code == 2
    out = capsys.readouterr()
    assert "fake UR5 controller" not in out.out and "Traceback" not in out.err
    assert says.format(home=station_home) in out.err.splitlines()[0]
