"""Live inspection through the real drivers: ur_rtde against the fake UR controller (robot and
line I/O) and pypylon against the pylon camera emulator playing twin-rendered shots.

One run of six sheets: part 2 gets a failed buffer, part 3 a protective stop mid-move, part 4
a pulled network cable, part 5 an emergency stop. Each must end as `fault` with the reject
output raised (read back on the controller), the operator must be asked exactly for the robot
and link faults, and the database must hold every part and every captured shot.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from test_inspection_support import bright_set, database, small_recipe

from station.devices.factory import open_devices
from station.inspection.cycle import Inspector
from station.inspection.faults import Fault
from station.inspection.recorder import Recorder
from station.inspection.results import Event
from station.storage.models import Part, Verdict
from station.twin.fake_ur import FakeURController

pytestmark = pytest.mark.timeout(240)
_hosts = itertools.count(2)
PRESENT, REJECT, RELEASE = 2, 4, 6


@pytest.fixture
def fake() -> Iterator[FakeURController]:
    host = f"127.{40 + os.getpid() % 200}.61.{next(_hosts)}"
    ctl = FakeURController(
        host,
        initial_tcp_pose=[0.4, 0.0, 0.5, math.pi, 0.0, 0.0],
        protective_stop_unlock_delay_s=0.0,
    )
    ctl.model.speed_scale = 4.0
    with ctl:
        yield ctl


class Conveyor(threading.Thread):
    """Brings a sheet (part-present input high) and takes it away after each release pulse.

    The line I/O counts rising edges it sees while polling, so the next sheet comes only once
    the station waits for it again (`ready`, set from the inspector's "waiting" event).
    """

    def __init__(self, fake: FakeURController) -> None:
        super().__init__(daemon=True)
        self.fake = fake
        self.stopped = threading.Event()
        self.ready = threading.Event()
        self.released: list[bool] = []  # reject output at each release

    def run(self) -> None:
        while not self.ready.wait(0.05):  # a sheet there before the heartbeat is not counted
            if self.stopped.is_set():
                return
        self.fake.set_digital_input(PRESENT, True)
        while not self.stopped.is_set():
            if self.fake.digital_output(RELEASE):
                self.ready.clear()
                self.released.append(self.fake.digital_output(REJECT))
                self.fake.set_digital_input(PRESENT, False)
                while not self.ready.wait(0.05):
                    if self.stopped.is_set():
                        return
                time.sleep(0.1)
                self.fake.set_digital_input(PRESENT, True)
            time.sleep(0.002)


@pytest.mark.slow
def test_faults_through_real_drivers(
    station_home: Path, fake: FakeURController, monkeypatch: pytest.MonkeyPatch
) -> None:
    from station.devices.pylon_emulator import prepare_twin_images

    monkeypatch.setenv("PYLON_CAMEMU", "1")
    recipe = small_recipe(
        station_home,
        robot__driver="ur_rtde",
        robot__host=fake.host,
        robot__settle_s=0.0,
        robot__connect_timeout_s=10.0,
        camera__driver="pylon",
        camera__retries=0,
        camera__emulator_images=str(station_home / "emu"),
        line_io={
            "driver": "ur_rtde",
            "part_present_input": PRESENT,
            "reject_output": REJECT,
            "release_output": RELEASE,
            "release_pulse_s": 0.05,
        },
    )
    prepare_twin_images(recipe, 4, station_home / "emu")
    db = database(recipe)
    dets = bright_set(recipe, threshold=0.3, mean=120.0)
    operator_calls: list[Fault] = []
    devices: list[Any] = []

    def inject(n: int) -> None:
        if n == 2:
            cam = devices[0].camera
            cam.device.ForceFailedBufferCount.Value = 1
            cam.device.ForceFailedBuffer.Execute()
        elif n == 3:
            fake.arm_protective_stop(0.5)
        elif n == 4:
            fake.disconnect_network()
        elif n == 5:
            fake.emergency_stop()

    def on_event(e: Event) -> None:
        if e.kind == "waiting":
            conveyor.ready.set()
        if e.kind == "part_started":
            inject(int(e.text.split()[-1]))

    def operator(fault: Fault) -> bool:
        operator_calls.append(fault)
        fake.release_emergency_stop()
        fake.unlock_protective_stop()
        fake.clear_faults()  # also plugs the cable back in
        return True

    conveyor = Conveyor(fake)
    try:
        with (
            open_devices(recipe) as dev,
            Inspector(
                recipe, dets, Recorder(db, recipe), dev, operator=operator, on_event=on_event
            ) as insp,
        ):
            devices.append(dev)
            conveyor.start()  # the first sheet arrives after the line I/O is open
            summary = insp.run_live(count=6)
    finally:
        conveyor.stopped.set()
        if conveyor.is_alive():
            conveyor.join(5)

    verdicts = [r.verdict for r in summary.results]
    assert verdicts[1:5] == [Verdict.FAULT] * 4, [r.reason for r in summary.results]
    assert Verdict.FAULT not in (verdicts[0], verdicts[5])
    kinds = [r.fault.kind for r in summary.results[1:5]]
    assert kinds[0] == "camera" and kinds[1] == "protective_stop"
    assert kinds[2] in ("robot", "line_io") and kinds[3] == "protective_stop"
    assert [f.kind for f in operator_calls] == kinds[1:]  # camera faults need no one
    # every faulted sheet left with the reject output high (read on the controller)
    assert len(conveyor.released) == 6
    for released, r in zip(conveyor.released, summary.results, strict=True):
        assert released == (r.verdict is not Verdict.PASS)
    assert fake.digital_output(REJECT)  # safe state after the run

    with db.session() as s:
        rows = s.scalars(select(Part).order_by(Part.sequence)).all()
        assert [r.verdict for r in rows] == verdicts
        shots = {r.sequence: [sh.pose_name for sh in r.shots] for r in rows}
    assert shots[1] == shots[6] == ["left", "centre", "right"]
    assert shots[2] == []  # the failed buffer was the first grab
    assert shots[3] == []  # stopped on the way to the first pose
    assert not list((recipe.data_dir / "journal").glob("*.json"))
