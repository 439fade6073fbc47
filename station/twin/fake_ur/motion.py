"""Pose maths and linear (movel) motion profiles for the fake UR controller.

Poses are UR pose vectors [x, y, z, rx, ry, rz] in metres and rotation-vector radians. A linear
move interpolates the position on a straight line and the orientation on the shortest rotation,
both following one trapezoidal velocity profile (accelerate, cruise, decelerate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from station.geometry.ur_poses import matrix_to_rotvec, rotvec_to_matrix


@dataclass
class LinearMove:
    """A movel from `start` to `target` with tool speed `v` (m/s) and acceleration `a` (m/s^2).

    `time_scale` > 1 makes the simulated robot faster than real time (for tests and demos).
    """

    start: list[float]
    target: list[float]
    v: float
    a: float
    t0: float
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        self.finished = False  # set by the controller when the target is reached
        p0, p1 = np.asarray(self.start[:3]), np.asarray(self.target[:3])
        self._dp = p1 - p0
        r0 = rotvec_to_matrix(self.start[3:6])
        self._r0 = r0
        self._drot = matrix_to_rotvec(r0.T @ rotvec_to_matrix(self.target[3:6]))
        dist = float(np.linalg.norm(self._dp))
        angle = float(np.linalg.norm(self._drot))
        # Rotation-only moves use the same limits in rad/s, as the controller does.
        self.length = max(dist, angle)
        v, a = max(self.v, 1e-6), max(self.a, 1e-6)
        d_acc = v * v / (2 * a)
        if self.length <= 2 * d_acc:
            self._t_acc = math.sqrt(self.length / a)
            self._v_peak = a * self._t_acc
            self._t_cruise = 0.0
        else:
            self._t_acc = v / a
            self._v_peak = v
            self._t_cruise = (self.length - 2 * d_acc) / v
        self.duration_real = 2 * self._t_acc + self._t_cruise
        self.duration = self.duration_real / max(self.time_scale, 1e-9)

    def _distance(self, tau: float) -> float:
        """Path length covered after `tau` seconds of robot time."""
        a, ta, tc = self.a, self._t_acc, self._t_cruise
        if tau <= 0:
            return 0.0
        if tau < ta:
            return 0.5 * a * tau * tau
        d_acc = 0.5 * a * ta * ta
        if tau < ta + tc:
            return d_acc + self._v_peak * (tau - ta)
        if tau < 2 * ta + tc:
            td = tau - ta - tc
            return d_acc + self._v_peak * tc + self._v_peak * td - 0.5 * a * td * td
        return self.length

    def fraction(self, now: float) -> float:
        if self.length <= 0:
            return 1.0
        tau = (now - self.t0) * self.time_scale
        return min(1.0, self._distance(tau) / self.length)

    def speed(self, now: float) -> float:
        tau = (now - self.t0) * self.time_scale
        ta, tc = self._t_acc, self._t_cruise
        if tau <= 0 or tau >= 2 * ta + tc:
            return 0.0
        if tau < ta:
            return self.a * tau
        if tau < ta + tc:
            return self._v_peak
        return self._v_peak - self.a * (tau - ta - tc)

    def done(self, now: float) -> bool:
        return now - self.t0 >= self.duration

    def pose_at_fraction(self, s: float) -> list[float]:
        p = np.asarray(self.start[:3]) + s * self._dp
        r = self._r0 @ rotvec_to_matrix(self._drot * s)
        return [float(v) for v in p] + [float(v) for v in matrix_to_rotvec(r)]

    def pose(self, now: float) -> list[float]:
        if self.done(now):
            return list(self.target)
        return self.pose_at_fraction(self.fraction(now))
