"""The calibration commands through the REAL drivers against the stand-ins: ur_rtde talking to
the fake UR controller, pypylon grabbing from the pylon camera emulator, which plays the twin's
board views (rendered with a camera 3 mm and 1 degree off the nominal mount, distortion on) in
the order the robot visits them."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from station.cellcal import geometry as geo
from station.cellcal.store import camera_model, nominal_model
from station.recipe import load_recipe
from station.twin.truth import perturbed_truth

pytest.importorskip("pypylon")
pytest.importorskip("rtde_control")

from test_cellcal import run, table_error_mm  # noqa: E402

from station.twin.fake_ur import FakeURController  # noqa: E402

# pylon times its waits with SIGALRM timers: a signal-based test timeout breaks them.
pytestmark = pytest.mark.timeout(240, method="thread")


@pytest.mark.slow
def test_calibration_through_fake_ur_and_pylon_emulator(
        station_home: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYLON_CAMEMU", "1")
    host = f"127.{60 + os.getpid() % 150}.19.2"
    params = perturbed_truth(load_recipe("glassfiber"), seed=1)
    (station_home / "recipes" / "emucal.yaml").write_text(yaml.safe_dump({
        "extends": "glassfiber-emulated", "name": "emucal",
        "robot": {"host": host, "settle_s": 0.0},
        "camera": {"emulator_images": "data/emucal/emulator"},
        "twin": {"params": params}}))
    with FakeURController(host, initial_tcp_pose=[0.4, 0.0, 0.5, math.pi, 0.0, 0.0],
                          protective_stop_unlock_delay_s=0.0) as fake:
        fake.model.speed_scale = 4.0
        code, out, err = run(capsys, "calibrate-camera", "-r", "emucal", "--count", "12",
                             "--prepare-emulator")
        assert code == 0, err
        assert len(list((station_home / "data/emucal/emulator").glob("view*.png"))) == 12
        code, out, err = run(capsys, "calibrate-camera", "-r", "emucal", "--count", "12")
        assert code == 0, err
        code, out, err = run(capsys, "calibrate-hand-eye", "-r", "emucal")
        assert code == 0, err
    recipe = load_recipe("emucal")
    data = yaml.safe_load((station_home / "calibration" / "cell-emucal.yaml").read_text())
    assert data["camera_serial"] == "0815-0000"  # the emulated Basler
    assert data["camera"]["views_used"] == [f"view{i:02d}" for i in range(12)]
    truth = params["camera_truth"]
    x_true = geo.from_pose(truth["mount_offset_mm"], truth["mount_rotvec_rad"])
    model = camera_model(recipe)
    err_t = geo.inv(x_true) @ model.camera_to_flange
    assert np.linalg.norm(err_t[:3, 3]) < 0.5 and geo.angle_deg(err_t) < 0.1
    # the stored model puts every pixel where the true camera sees it (its focal length alone
    # says little: this seed's is 0.05 % off the lens data)
    assert table_error_mm(recipe, model) < 0.05
    assert table_error_mm(recipe, nominal_model(recipe)) > 1.0
    assert data["hand_eye"]["rms_px"] < 0.3
