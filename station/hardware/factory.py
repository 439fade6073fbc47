"""Build the cell's devices from a recipe: real drivers or the digital twin, per device.

`open_devices(recipe)` is a context manager yielding `Devices(robot, camera, line, world)`,
connected and open; everything is closed again on exit (in reverse order). Drivers follow
`recipe.robot_driver` / `camera_driver` / `line_driver`; the real ones (ur_rtde, pypylon) are
imported only when asked for. `world` is the shared `TwinWorld` when any device is simulated
(pass one in to control seeds or inject faults), else None.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from station.errors import StationError
from station.hardware.interfaces import Camera, LineIO, Robot
from station.recipe import Recipe

if TYPE_CHECKING:
    from station.twin.world import TwinWorld


@dataclass
class Devices:
    robot: Robot
    camera: Camera
    line: LineIO
    world: TwinWorld | None = None


@contextlib.contextmanager
def _driver(device: str, driver: str) -> Iterator[None]:
    """A missing driver package is an operator error, not a traceback."""
    try:
        yield
    except ImportError as exc:
        raise StationError(
            f"{device} driver {driver!r} cannot be loaded: {exc}",
            hint="install the station with its hardware extras, or set the driver to sim",
        ) from None


def _make_robot(recipe: Recipe, world: TwinWorld | None) -> Robot:
    if recipe.robot_driver == "sim":
        from station.twin.robot import SimRobot

        assert world is not None
        return SimRobot(world)
    with _driver("robot", "ur_rtde"):
        from station.hardware.ur.robot import URRobot
    return URRobot(recipe.robot)


def _make_camera(recipe: Recipe, world: TwinWorld | None) -> Camera:
    if recipe.camera_driver == "sim":
        from station.twin.camera import SimCamera

        assert world is not None
        return SimCamera(world)
    with _driver("camera", "pylon"):
        from station.hardware.pylon.camera import PylonCamera
    return PylonCamera(recipe.camera)


def _make_line(recipe: Recipe, world: TwinWorld | None) -> LineIO:
    if recipe.line_driver == "sim":
        from station.twin.line import SimLine

        assert world is not None
        return SimLine(world)
    with _driver("line I/O", "ur_rtde"):
        from station.hardware.ur.line_io import URLineIO
    return URLineIO(recipe.robot, recipe.line_io)


def uses_twin(recipe: Recipe) -> bool:
    return "sim" in (recipe.robot_driver, recipe.camera_driver, recipe.line_driver)


@contextlib.contextmanager
def open_devices(recipe: Recipe, world: TwinWorld | None = None) -> Iterator[Devices]:
    """Robot connected, camera and line I/O open; all closed on exit, even after an error."""
    if world is None and uses_twin(recipe):
        from station.twin.world import TwinWorld

        world = TwinWorld(recipe)
    with contextlib.ExitStack() as stack:
        robot = _make_robot(recipe, world)
        robot.connect()
        stack.callback(_quiet_close, robot.close)
        camera = _make_camera(recipe, world)
        camera.open()
        stack.callback(_quiet_close, camera.close)
        line = _make_line(recipe, world)
        line.open()
        stack.callback(_quiet_close, line.close)
        yield Devices(robot, camera, line, world if uses_twin(recipe) else None)


def _quiet_close(close) -> None:  # noqa: ANN001
    """Closing after a failure must not hide the failure; closing errors are dropped."""
    with contextlib.suppress(StationError, OSError):
        close()
