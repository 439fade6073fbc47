"""Simulated UR5: linear moves with trapezoidal timing, settle time, faults, pose read-back.

Move duration follows a trapezoidal speed profile from the recipe's speed and acceleration
(a triangle when the move is too short to reach full speed), for the translation and for the
rotation (at `twin.params.angular_speed_rad_s` / `angular_acceleration_rad_s2`); the longer one
counts. The world's clock advances by the computed time; real sleeping is scaled by
`twin.time_scale` (0: none).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from station.errors import ProtectiveStop, RobotError
from station.geometry.pose_plan import move_s
from station.geometry.ur_poses import rotation_distance
from station.interfaces import RobotState
from station.recipe import Pose
from station.twin.world import TwinWorld, pose_tcp

UR5_REACH_MM = 850.0
MIN_HEIGHT_MM = 20.0  # the camera must stay this far above the table
REPEATABILITY_MM = 0.03


@dataclass(frozen=True)
class MoveTiming:
    pose: str
    distance_mm: float
    rotation_rad: float
    move_s: float
    settle_s: float

    @property
    def total_s(self) -> float:
        return self.move_s + self.settle_s


class SimRobot:
    """The twin's robot; implements `station.interfaces.Robot`."""

    name = "sim-ur5"

    def __init__(self, world: TwinWorld) -> None:
        self.world = world
        self.cfg = world.recipe.robot
        params = world.twin.params
        self.w_max = float(params.get("angular_speed_rad_s", 1.05))
        self.alpha_max = float(params.get("angular_acceleration_rad_s2", 1.4))
        self.connected = False
        self.timings: list[MoveTiming] = []

    def _link(self, what: str) -> None:
        if self.world.trip("link_lost"):
            self.world.link_up = False
        if not self.world.link_up:
            self.connected = False
            raise RobotError(
                f"lost connection to the robot (simulated, {self.cfg.host}) while {what}",
                hint="check the network link to the controller, then restart the run",
            )

    def connect(self) -> None:
        self._link("connecting")
        self.connected = True

    def close(self) -> None:
        self.connected = False

    def plan(self, pose: Pose) -> MoveTiming:
        """The timing of a move from the current TCP to `pose` (nothing moves)."""
        cur, target = self.world.tcp, pose_tcp(pose)
        dist = float(np.linalg.norm(target[:3] - cur[:3]))
        rot = rotation_distance(cur[3:], target[3:])
        move = max(
            move_s(dist, self.cfg.speed_mm_s, self.cfg.acceleration_mm_s2),
            move_s(rot, self.w_max, self.alpha_max),
        )
        settle = self.cfg.settle_s if (dist > 0 or rot > 0) else 0.0
        return MoveTiming(pose.name, dist, rot, move, settle)

    def move_to(self, pose: Pose) -> RobotState:
        if not self.connected:
            raise RobotError("robot is not connected", hint="check the robot's link and power")
        self._link(f"moving to {pose.name!r}")
        if self.world.protective_stop:
            raise ProtectiveStop(
                "robot is in protective stop",
                hint="clear the stop on the teach pendant, check for collisions, then restart",
            )
        target = pose_tcp(pose)
        if np.linalg.norm(target[:3]) > UR5_REACH_MM:
            raise RobotError(f"pose {pose.name!r} is out of the UR5's reach "
                             f"({np.linalg.norm(target[:3]):.0f} mm > {UR5_REACH_MM:.0f} mm)",
                             hint="fix the pose in the recipe")
        if target[2] < MIN_HEIGHT_MM:
            raise RobotError(f"pose {pose.name!r} is {target[2]:.0f} mm above the table "
                             f"(minimum {MIN_HEIGHT_MM:.0f} mm)", hint="fix the pose in the recipe")
        timing = self.plan(pose)
        if timing.move_s > self.cfg.move_timeout_s:
            raise RobotError(f"move to {pose.name!r} would take {timing.move_s:.1f} s, longer "
                             f"than move_timeout_s {self.cfg.move_timeout_s:g}",
                             hint="raise the speed or the timeout in the recipe")
        if self.world.trip("protective_stop"):
            self.world.protective_stop = True
            self.world.wait(timing.move_s / 2)
            self.world.tcp = (self.world.tcp + target) / 2  # stopped half way
            raise ProtectiveStop(
                f"robot entered protective stop while moving to {pose.name!r}",
                hint="clear the stop on the teach pendant, check for collisions, then restart",
            )
        self.world.wait(timing.move_s)
        actual = target.copy()
        actual[:3] += self.world.jitter_rng.normal(0, REPEATABILITY_MM / 3, 3)
        self.world.tcp = actual
        self.world.wait(timing.settle_s)
        self.timings.append(timing)
        return self.state()

    def state(self) -> RobotState:
        self._link("reading its state")
        t = self.world.tcp
        return RobotState(
            tcp_mm_rotvec=tuple(float(v) for v in t),  # type: ignore[arg-type]
            protective_stop=self.world.protective_stop,
            emergency_stop=False,
            timestamp_s=self.world.clock_s,
        )
