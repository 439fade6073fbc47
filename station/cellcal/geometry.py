"""Rigid transforms as 4x4 matrices (mm), from and to UR poses (mm + rotation vector)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from station.geometry.ur_poses import pose_to_matrix


def from_pose(position: Sequence[float], rotvec: Sequence[float]) -> np.ndarray:
    return pose_to_matrix([*np.asarray(position, np.float64), *np.asarray(rotvec, np.float64)])


def from_tcp(tcp: Sequence[float]) -> np.ndarray:
    return from_pose(tcp[:3], tcp[3:6])


def from_rt(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    return from_pose(np.ravel(tvec), np.ravel(rvec))


def rotvec(t: np.ndarray) -> np.ndarray:
    return cv2.Rodrigues(np.ascontiguousarray(t[:3, :3]))[0].ravel()


def angle_deg(r: np.ndarray) -> float:
    """Rotation angle of a 3x3 rotation, in degrees."""
    return math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(r[:3, :3]) - 1) / 2))))


def magnitude(t: np.ndarray) -> tuple[float, float]:
    """How far a 4x4 transform moves: its translation (mm) and rotation angle (degrees)."""
    return float(np.linalg.norm(t[:3, 3])), angle_deg(t)


def inv(t: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = t[:3, :3].T
    out[:3, 3] = -t[:3, :3].T @ t[:3, 3]
    return out


def mean_transform(ts: Sequence[np.ndarray]) -> np.ndarray:
    """Chordal mean of rotations (projected back onto SO(3)) and mean of translations."""
    m = sum(t[:3, :3] for t in ts)
    u, _, vt = np.linalg.svd(m)
    r = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = np.mean([t[:3, 3] for t in ts], axis=0)
    return out


def as_dict(t: np.ndarray) -> dict[str, list[float]]:
    return {"position_mm": [round(float(v), 5) for v in t[:3, 3]],
            "rotvec_rad": [round(float(v), 7) for v in rotvec(t)]}


def from_dict(d: dict[str, Sequence[float]]) -> np.ndarray:
    return from_pose(d["position_mm"], d["rotvec_rad"])
