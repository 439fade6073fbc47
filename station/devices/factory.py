"""Build the cell's devices from a recipe: real drivers or the digital twin, per device.

`open_devices(recipe)` is a context manager yielding `Devices(robot, camera, line, world)`,
connected and open; everything is closed again on exit (in reverse order). Each device's
builder is the one registered in `station.devices.drivers` under the recipe's driver name
(`recipe.robot_driver` / `camera_driver` / `line_driver`). `world` is the shared `TwinWorld`
when any device is simulated (pass one in to control seeds or inject faults), else None.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from station.devices.drivers import CAMERAS, LINES, ROBOTS
from station.errors import StationError
from station.interfaces import Camera, LineIO, Robot
from station.recipe import Recipe
from station.twin.world import TwinWorld


@dataclass
class Devices:
    robot: Robot
    camera: Camera
    line: LineIO
    world: TwinWorld | None = None


def uses_twin(recipe: Recipe) -> bool:
    """Whether any of the recipe's devices runs on the digital twin."""
    return (
        recipe.robot_driver in ROBOTS.twin
        or recipe.camera_driver in CAMERAS.twin
        or recipe.line_driver in LINES.twin
    )


@contextlib.contextmanager
def open_devices(recipe: Recipe, world: TwinWorld | None = None) -> Iterator[Devices]:
    """Robot connected, camera and line I/O open; all closed on exit, even after an error."""
    twin = uses_twin(recipe)
    if world is None and twin:
        world = TwinWorld(recipe)
    with contextlib.ExitStack() as stack:
        robot = ROBOTS.build(recipe.robot_driver, recipe, world)
        robot.connect()
        stack.callback(_quiet_close, robot.close)
        camera = CAMERAS.build(recipe.camera_driver, recipe, world)
        camera.open()
        stack.callback(_quiet_close, camera.close)
        line = LINES.build(recipe.line_driver, recipe, world)
        line.open()
        stack.callback(_quiet_close, line.close)
        yield Devices(robot, camera, line, world if twin else None)


def _quiet_close(close: Callable[[], None]) -> None:
    """Closing after a failure must not hide the failure; closing errors are dropped."""
    with contextlib.suppress(StationError, OSError):
        close()
