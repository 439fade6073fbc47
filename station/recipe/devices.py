"""Device settings in a recipe: one typed config per driver, chosen by its `driver` field.

Each device section (`robot`, `camera`, `line_io`) is a discriminated union of the configs
registered here for that device (`@CAMERA.register("pylon")` on a subclass of `CameraConfig`).
`driver: auto`, or no driver, follows the recipe's `backend` and is resolved before validation.
A recipe is often written for both backends, so a section may also hold settings of the
device's other drivers (a Basler `serial` on the twin camera): they are checked as that driver
checks them, then left out of the chosen config. `station.devices` builds each driver's device.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator

from station.recipe.base import BOUND_ERRORS, Pose, Strict, TimeoutS, Vec3, field_ranges

# Camera limits: the pylon camera emulator takes up to 4096 x 4096; the largest Basler area
# sensors (boost 65 MP: 9344 x 7000) fit these too. pypylon checks the camera's own limits.
MAX_SENSOR_SIDE = 16384
MAX_SENSOR_PIXELS = 1 << 26
MAX_EXPOSURE_US = 60_000_000  # a minute; Basler cameras and the emulator stop at 10 s
MAX_TWIN_SIDE = 4096  # as the pylon emulator; a twin shot takes ~170 bytes per pixel to render

C = TypeVar("C", bound=Strict)


@dataclass
class Device:
    """One kind of device in a recipe: its section, its drivers' configs, what `auto` means."""

    section: str
    auto: dict[str, str]  # backend -> the driver `auto` stands for
    configs: dict[str, type[Strict]] = field(default_factory=dict)

    def register(self, name: str) -> Callable[[type[C]], type[C]]:
        """Class decorator: `cls` is this device's config for `driver: <name>`."""

        def add(cls: type[C]) -> type[C]:
            if cls.model_fields["driver"].default != name:
                raise TypeError(f"{cls.__name__}.driver must default to {name!r}")
            self.configs[name] = cls
            return cls

        return add

    def union(self) -> Any:
        """The section's type: the registered configs, told apart by `driver`."""
        return Annotated[reduce(operator.or_, self.configs.values()), Field(discriminator="driver")]

    def driver_names(self) -> list[str]:
        return ["auto", *self.configs]

    def pick(self, data: Any, backend: Any) -> Any:
        """A section's mapping with `auto` resolved and other drivers' settings checked and
        left out; anything else is returned for pydantic to judge."""
        if not isinstance(data, dict):
            return data
        driver = data.get("driver", "auto")
        if driver == "auto":
            driver = self.auto.get(backend, self.auto["sim"])  # a bad backend is named apart
        chosen = self.configs.get(driver) if isinstance(driver, str) else None
        if chosen is None:
            return {**data, "driver": driver}  # pydantic names the unknown driver
        others = {k for c in self.configs.values() for k in c.model_fields}
        foreign = {k for k in data if k not in chosen.model_fields and k in others}
        problems = [p for name in self.configs for p in self._check(name, data, foreign)]
        if problems:
            raise ValueError("; ".join(problems))
        return {k: v for k, v in data.items() if k not in foreign} | {"driver": driver}

    def _check(self, name: str, data: dict[str, Any], foreign: set[str]) -> list[str]:
        """Problems with the `foreign` settings that driver `name` owns, as it would see them."""
        cls = self.configs[name]
        keys = foreign & set(cls.model_fields)
        if not keys:
            return []
        try:
            cls.model_validate({k: v for k, v in data.items() if k in cls.model_fields}
                               | {"driver": name})
        except ValidationError as exc:
            ranges = field_ranges(cls, [], "", {})
            return [
                f"{self.section}.{e['loc'][0]}: "
                + (f"must be {ranges[str(e['loc'][0])]}" if e["type"] in BOUND_ERRORS
                   and str(e["loc"][0]) in ranges else e["msg"].removeprefix("Value error, "))
                + f" (got {e.get('input')!r})"
                for e in exc.errors()
                if e["loc"] and e["loc"][0] in keys
            ]
        return []


ROBOT = Device("robot", {"sim": "sim", "real": "ur_rtde"})
CAMERA = Device("camera", {"sim": "sim", "real": "pylon"})
LINE_IO = Device("line_io", {"sim": "sim", "real": "ur_rtde"})
DEVICES = (ROBOT, CAMERA, LINE_IO)


def pick_drivers(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe's fields with every device section given its concrete driver's settings."""
    out = dict(data)
    for dev in DEVICES:
        if dev.section in out or dev is not ROBOT:  # the robot section is required
            out[dev.section] = dev.pick(out.get(dev.section, {}), out.get("backend", "sim"))
    return out


def plain_loc(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    """An error location without the union's driver tag: ('camera', 'pylon', 'width') ->
    ('camera', 'width'), as the field is written in the recipe."""
    for dev in DEVICES:
        if len(loc) > 1 and loc[0] == dev.section and loc[1] in dev.configs:
            return (loc[0], *loc[2:])
    return loc


def device_of(section: str) -> Device | None:
    return next((d for d in DEVICES if d.section == section), None)


# -- robot ------------------------------------------------------------------------------------
class RobotConfig(Strict):
    """Settings every robot driver shares: the tool, motion limits and the recipe's poses."""

    host: str = "127.0.0.1"  # the UR controller; the twin names it in its messages
    tcp_offset_mm: Vec3 = (0.0, 0.0, 0.0)
    tcp_offset_rotvec_rad: Vec3 = (0.0, 0.0, 0.0)
    # ur_rtde's moveL limits: 3 m/s, 150 m/s²
    speed_mm_s: float = Field(250.0, gt=0, le=3000)
    acceleration_mm_s2: float = Field(1200.0, gt=0, le=150_000)
    settle_s: float = Field(0.15, ge=0, le=60)
    move_timeout_s: TimeoutS = 20.0
    # the arm's reach: the flange must stay within reach_mm of the shoulder axis, which sits
    # shoulder_height_mm above the base (UR5: 850 mm, 89.2 mm); checked for every planned pose
    reach_mm: float = Field(850.0, gt=0, le=5000)
    shoulder_height_mm: float = Field(89.2, ge=0, le=2000)
    home: Pose
    # the shot poses, inline or (poses_file, written by `station plan-poses`) from a YAML file
    # beside the recipe; the loader reads the file into `poses`
    poses: list[Pose] = Field(min_length=1, max_length=400)
    poses_file: str | None = None

    @field_validator("poses")
    @classmethod
    def _unique_names(cls, poses: list[Pose]) -> list[Pose]:
        names = [p.name for p in poses]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pose names must be unique, repeated: {', '.join(dupes)}")
        return poses


@ROBOT.register("sim")
class SimRobotConfig(RobotConfig):
    """The twin's robot (station.twin.robot)."""

    driver: Literal["sim"] = "sim"


@ROBOT.register("ur_rtde")
class URRobotConfig(RobotConfig):
    """A UR controller through ur_rtde (station.hardware.ur)."""

    driver: Literal["ur_rtde"] = "ur_rtde"
    connect_timeout_s: TimeoutS = 5.0
    # the tool's mass (camera, lens, bracket), set at connect and after every script upload;
    # None leaves the pendant installation's payload. A UR5 carries at most 5 kg.
    payload_kg: float | None = Field(None, gt=0, le=5.0)
    payload_cog_mm: Vec3 = (0.0, 0.0, 0.0)  # its centre of gravity from the tool flange


# -- camera -----------------------------------------------------------------------------------
class LensConfig(Strict):
    """Optics used by the twin to project the sheet, and by the real camera's calibration."""

    focal_length_mm: float = Field(12.0, gt=0, le=1000)
    pixel_size_um: float = Field(3.45, gt=0, le=100)
    focus_distance_mm: float = Field(350.0, gt=0, le=100_000)
    f_number: float = Field(4.0, gt=0, le=64)
    min_focus_distance_mm: float = Field(100.0, gt=0, le=100_000)  # the lens's closest focus


class CameraConfig(Strict):
    """Settings every camera driver shares: the image, exposure, trigger, retries and lens."""

    pixel_format: Literal["Mono8", "RGB8", "BayerRG8"] = "Mono8"
    width: int = Field(640, ge=16, le=MAX_SENSOR_SIDE)
    height: int = Field(512, ge=16, le=MAX_SENSOR_SIDE)
    exposure_us: float = Field(8000.0, gt=0, le=MAX_EXPOSURE_US)
    gain_db: float = Field(0.0, ge=0, le=48)
    trigger: Literal["software"] = "software"  # kept so recipes that name it still load
    timeout_ms: int = Field(1000, gt=0, le=600_000)
    retries: int = Field(2, ge=0, le=20)
    lens: LensConfig = LensConfig()

    @field_validator("trigger", mode="before")
    @classmethod
    def _software_trigger(cls, value: object) -> object:
        if value != "software":
            raise ValueError(
                "the station drives only software triggers (nothing in the cell "
                "pulses the camera's trigger input); set camera.trigger: software or leave it out"
            )
        return value

    @model_validator(mode="after")
    def _sensor_pixels(self) -> CameraConfig:
        if self.width * self.height > MAX_SENSOR_PIXELS:
            raise ValueError(
                f"width x height = {self.width} x {self.height} is more than "
                f"{MAX_SENSOR_PIXELS:,} pixels (64 Mpx, beyond any Basler area sensor)"
            )
        return self


@CAMERA.register("sim")
class SimCameraConfig(CameraConfig):
    """The twin's camera (station.twin.camera); at most MAX_TWIN_SIDE px a side (the recipe
    checks it, with the crop)."""

    driver: Literal["sim"] = "sim"


@CAMERA.register("pylon")
class PylonCameraConfig(CameraConfig):
    """A Basler camera, or the pylon camera emulator, through pypylon (station.hardware.pylon)."""

    driver: Literal["pylon"] = "pylon"
    serial: str | None = None  # None: the only camera found (several are refused)
    feature_file: str | None = None  # pylon .pfs file applied before the recipe settings
    emulator_images: str | None = None  # pylon camera emulator only: image file or folder to play


# -- line I/O ---------------------------------------------------------------------------------
class LineIOConfig(Strict):
    """The line contract's signals and timeouts, the same for every line driver."""

    reject_output: int = Field(0, ge=0, le=7)  # standard digital output on the UR control box
    part_present_input: int = Field(0, ge=0, le=7)
    confirm_timeout_s: TimeoutS = 0.5
    part_timeout_s: TimeoutS = 30.0
    # ur_rtde line I/O: standard digital output pulsed to let the conveyor move a sheet on
    # (None: the line does not wait for a release signal).
    release_output: int | None = Field(None, ge=0, le=7)
    release_pulse_s: TimeoutS = 0.2
    # The line contract (README "Line contract"); None switches a signal off.
    # Toggled every heartbeat_period_s while the station inspects; still when it dies or hangs.
    heartbeat_output: int | None = Field(1, ge=0, le=7)
    heartbeat_period_s: TimeoutS = 0.25
    # Low from a sheet's arrival until its verdict and reject output are set and read back.
    result_valid_output: int | None = Field(2, ge=0, le=7)
    # RTDE input int register (ur_rtde's IO range 18-22): the station's sheet number, written
    # before RESULT_VALID rises.
    part_id_register: int | None = Field(18, ge=18, le=22)
    # The PLC's side: the longest it waits for RESULT_VALID after presenting a sheet, and for
    # a heartbeat toggle, before it rejects the sheet.
    result_timeout_s: TimeoutS = 30.0
    heartbeat_timeout_s: TimeoutS = 1.0

    @model_validator(mode="after")
    def _distinct_outputs(self) -> LineIOConfig:
        used: dict[int, str] = {}
        for name in ("reject_output", "release_output", "heartbeat_output", "result_valid_output"):
            out = getattr(self, name)
            if out is None:
                continue
            if out in used:
                raise ValueError(f"{name} and {used[out]} are both DO{out}; give each its own")
            used[out] = name
        if self.heartbeat_output is not None and (
            self.heartbeat_timeout_s < 2 * self.heartbeat_period_s
        ):
            raise ValueError(
                f"heartbeat_timeout_s ({self.heartbeat_timeout_s:g}) must be at least twice "
                f"heartbeat_period_s ({self.heartbeat_period_s:g})"
            )
        return self


@LINE_IO.register("sim")
class SimLineConfig(LineIOConfig):
    """The twin's conveyor (station.twin.line)."""

    driver: Literal["sim"] = "sim"


@LINE_IO.register("ur_rtde")
class URLineConfig(LineIOConfig):
    """Digital I/O on the UR control box through ur_rtde (station.hardware.ur.line_io)."""

    driver: Literal["ur_rtde"] = "ur_rtde"

    @model_validator(mode="after")
    def _fail_safe_signals(self) -> URLineConfig:
        """A real line needs both: without the heartbeat a dead station's last REJECT low
        stands for every later sheet, without RESULT_VALID a stuck one's does."""
        for name, default in (("heartbeat_output", 1), ("result_valid_output", 2)):
            if getattr(self, name) is None:
                raise ValueError(
                    f"{name} is null: a ur_rtde line cannot run without it (the PLC could "
                    "not tell a dead or stuck station from one that passed the sheet); set it "
                    f'to a free DO (default {default}), README "Line contract"'
                )
        return self
