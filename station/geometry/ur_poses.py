"""UR pose maths: rotation vectors, 4x4 transforms, pose_trans as in URScript.

Poses are UR pose vectors [x, y, z, rx, ry, rz]: position and rotation vector (axis * angle).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def rotvec_to_matrix(rv: Sequence[float]) -> np.ndarray:
    r = np.asarray(rv, dtype=float)
    angle = float(np.linalg.norm(r))
    if angle < 1e-12:
        return np.eye(3)
    k = r / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * (kx @ kx)


def _matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0, robust for every rotation angle."""
    tr = m[0, 0] + m[1, 1] + m[2, 2]
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    qa = np.asarray(q, dtype=float)
    qa /= np.linalg.norm(qa)
    return qa if qa[0] >= 0 else -qa


def matrix_to_rotvec(m: np.ndarray) -> np.ndarray:
    q = _matrix_to_quat(m)
    vnorm = float(np.linalg.norm(q[1:]))
    if vnorm < 1e-12:
        return np.zeros(3)
    angle = 2.0 * math.atan2(vnorm, q[0])
    return q[1:] / vnorm * angle


def pose_to_matrix(pose: Sequence[float]) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = rotvec_to_matrix(pose[3:6])
    t[:3, 3] = pose[:3]
    return t


def matrix_to_pose(t: np.ndarray) -> list[float]:
    return [float(v) for v in t[:3, 3]] + [float(v) for v in matrix_to_rotvec(t[:3, :3])]


def pose_trans(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """URScript pose_trans: b expressed in frame a, returned in a's parent frame."""
    return matrix_to_pose(pose_to_matrix(a) @ pose_to_matrix(b))


def pose_inv(a: Sequence[float]) -> list[float]:
    return matrix_to_pose(np.linalg.inv(pose_to_matrix(a)))


def rotation_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Angle (rad) of the rotation taking orientation `a` to orientation `b`."""
    rel = rotvec_to_matrix(a).T @ rotvec_to_matrix(b)
    return float(np.linalg.norm(matrix_to_rotvec(rel)))
