"""The narrow interfaces between the inspection cycle and the cell's devices.

Real drivers (UR5 via ur_rtde, Basler via pypylon) and the digital twin implement the same
protocols; `station.devices.factory` builds them from a recipe. Every method either does what
it says or raises a `station.errors.HardwareError` subclass with a one-line message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from station.recipe import Pose


@dataclass(frozen=True)
class RobotState:
    """What the robot reports: actual TCP pose (mm, rotvec rad) and safety status."""

    tcp_mm_rotvec: tuple[float, float, float, float, float, float]
    protective_stop: bool = False
    emergency_stop: bool = False
    timestamp_s: float = 0.0


@dataclass
class Frame:
    """One grabbed image and what is known about how it was taken."""

    image: np.ndarray  # HxW uint8 (Mono8) or HxWx3 uint8 (RGB)
    timestamp_s: float
    camera_settings: dict[str, Any] = field(default_factory=dict)
    # Ground truth, only from the digital twin: HxW uint8 mask (255 = defect) and labels.
    mask: np.ndarray | None = None
    defects: list[dict[str, Any]] = field(default_factory=list)
    # the whole sheet's defects (twin only), seen or not: what a verdict must be judged against
    sheet_defects: list[dict[str, Any]] | None = None


@runtime_checkable
class Robot(Protocol):
    def connect(self) -> None: ...
    def close(self) -> None: ...
    def move_to(self, pose: Pose) -> RobotState:
        """Linear move to `pose`, wait for it to finish and settle; return the pose read back.

        Raises ProtectiveStop if the robot stops on the way, RobotError on a lost link or timeout.
        """
        ...

    def state(self) -> RobotState: ...


@runtime_checkable
class Camera(Protocol):
    def open(self) -> None: ...
    def close(self) -> None: ...
    def grab(self) -> Frame:
        """Execute a software trigger and return that trigger's frame.

        Retries per the recipe; raises CameraError after the last failed try.
        """
        ...

    def settings(self) -> dict[str, Any]: ...


@runtime_checkable
class LineIO(Protocol):
    """The conveyor side: a sheet arrives, and the reject signal goes out."""

    def open(self) -> None: ...
    def close(self) -> None: ...
    def wait_for_part(self, timeout_s: float) -> str | None:
        """Block until a sheet is in place; return its id (or None on timeout)."""
        ...

    def set_reject(self, reject: bool) -> None:
        """Set the reject output and confirm it by read-back; LineIOError if it does not hold."""
        ...

    def release_part(self) -> None:
        """Tell the line the sheet may move on (after the verdict and reject output are set)."""
        ...

    # -- the line contract (README "Line contract") ----------------------------------------
    def publish_result(self, reject: bool) -> None:
        """Set the reject output and read it back, write the sheet's number, then raise
        RESULT_VALID and read it back. `wait_for_part` lowers RESULT_VALID again when the sheet
        leaves or the next one arrives. LineIOError if any step does not hold."""
        ...

    def start_heartbeat(self) -> None:
        """Toggle the heartbeat output from now on (the station inspects)."""
        ...

    def fail_safe(self) -> None:
        """Stop the heartbeat, raise the reject output and lower RESULT_VALID, each read back:
        the line rejects whatever arrives. LineIOError if an output does not hold."""
        ...
