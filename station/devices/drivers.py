"""One builder per driver: how a recipe's device section becomes a connected-to-be device.

A driver's settings are its config class in `station.recipe.devices` (registered there under
its `driver` name); its builder is registered here under the same name. Adding a camera: its
folder under `station/hardware/`, its config (`@CAMERA.register("name")`) and one
`@CAMERAS.register("name")` builder below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from station.hardware.pylon.camera import PylonCamera
from station.hardware.ur.line_io import URLineIO
from station.hardware.ur.robot import URRobot
from station.interfaces import Camera, LineIO, Robot
from station.recipe import Recipe
from station.recipe.base import Strict
from station.recipe.devices import CAMERA, LINE_IO, ROBOT, Device, PylonCameraConfig, URRobotConfig
from station.twin.camera import SimCamera
from station.twin.line import SimLine
from station.twin.robot import SimRobot
from station.twin.world import TwinWorld

D = TypeVar("D")
C = TypeVar("C", bound=Strict)
Builder = Callable[[Recipe, TwinWorld | None], D]


@dataclass
class Registry(Generic[D]):
    """The builders of one kind of device, by driver name (the recipe's `driver` values)."""

    device: Device
    builders: dict[str, Builder[D]] = field(default_factory=dict)
    twin: set[str] = field(default_factory=set)  # drivers that run on the shared TwinWorld

    def register(self, name: str, twin: bool = False) -> Callable[[Builder[D]], Builder[D]]:
        def add(build: Builder[D]) -> Builder[D]:
            if name not in self.device.configs:
                raise KeyError(f"{self.device.section} driver {name!r} has no config class")
            self.builders[name] = build
            if twin:
                self.twin.add(name)
            return build

        return add

    def build(self, name: str, recipe: Recipe, world: TwinWorld | None) -> D:
        return self.builders[name](recipe, world)


ROBOTS: Registry[Robot] = Registry(ROBOT)
CAMERAS: Registry[Camera] = Registry(CAMERA)
LINES: Registry[LineIO] = Registry(LINE_IO)


def as_config(cls: type[C], cfg: Strict) -> C:
    """`cfg` as driver config `cls`: itself, or its shared settings with `cls`'s defaults (a
    recipe copied with another driver named, as some tests and tools do)."""
    if isinstance(cfg, cls):
        return cfg
    own = {k: v for k, v in cfg.model_dump().items() if k in cls.model_fields}
    return cls.model_validate(own | {"driver": cls.model_fields["driver"].default})


def _world(world: TwinWorld | None) -> TwinWorld:
    assert world is not None, "a twin driver needs the TwinWorld (open_devices makes it)"
    return world


# -- the digital twin -------------------------------------------------------------------------
@ROBOTS.register("sim", twin=True)
def _sim_robot(recipe: Recipe, world: TwinWorld | None) -> Robot:
    return SimRobot(_world(world))


@CAMERAS.register("sim", twin=True)
def _sim_camera(recipe: Recipe, world: TwinWorld | None) -> Camera:
    return SimCamera(_world(world))


@LINES.register("sim", twin=True)
def _sim_line(recipe: Recipe, world: TwinWorld | None) -> LineIO:
    return SimLine(_world(world))


# -- UR5 through ur_rtde (station.hardware.ur) ------------------------------------------------
@ROBOTS.register("ur_rtde")
def _ur_robot(recipe: Recipe, world: TwinWorld | None) -> Robot:
    return URRobot(as_config(URRobotConfig, recipe.robot))


@LINES.register("ur_rtde")
def _ur_line(recipe: Recipe, world: TwinWorld | None) -> LineIO:
    return URLineIO(as_config(URRobotConfig, recipe.robot), recipe.line_io)


# -- Basler through pypylon (station.hardware.pylon) ------------------------------------------
@CAMERAS.register("pylon")
def _pylon_camera(recipe: Recipe, world: TwinWorld | None) -> Camera:
    return PylonCamera(as_config(PylonCameraConfig, recipe.camera))
