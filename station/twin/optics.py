"""Camera geometry of the twin: TCP pose -> pinhole camera looking at the table plane (z = 0).

The TCP is the camera's optical centre (the recipe's `tcp_offset_mm` puts it there). The camera
frame is the tool frame: x to the image right, y to the image bottom, z along the optical axis.
With the rotation vector [pi, 0, 0] the camera looks straight down, image u grows with base x
and image v grows with base -y. Pixel centres sit at integer coordinates (OpenCV convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from station.geometry.coverage import focal_px
from station.geometry.ur_poses import rotvec_to_matrix
from station.recipe import CameraConfig


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @classmethod
    def from_camera(cls, cam: CameraConfig) -> Intrinsics:
        f_px = focal_px(cam.lens)
        return cls(f_px, f_px, (cam.width - 1) / 2.0, (cam.height - 1) / 2.0, cam.width, cam.height)

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], np.float64)


@dataclass(frozen=True)
class CameraPose:
    """Camera centre (mm, base frame) and rotation camera -> base."""

    centre: np.ndarray
    rotation: np.ndarray

    @classmethod
    def from_tcp(cls, tcp: tuple[float, ...] | np.ndarray) -> CameraPose:
        t = np.asarray(tcp, dtype=np.float64)
        return cls(t[:3].copy(), rotvec_to_matrix(t[3:6]))


def plane_homography(k: Intrinsics, pose: CameraPose) -> np.ndarray:
    """3x3 homography: base-frame table point (x, y, 1) in mm -> image pixel (u, v, 1)."""
    r_cw = pose.rotation.T
    t_cw = -r_cw @ pose.centre
    m = np.column_stack([r_cw[:, 0], r_cw[:, 1], t_cw])
    return k.matrix @ m


def project_points(k: Intrinsics, pose: CameraPose, pts_mm: np.ndarray) -> np.ndarray:
    """Pixels (N, 2) of base-frame 3-D points (N, 3) in mm."""
    pc = (np.asarray(pts_mm, np.float64) - pose.centre) @ pose.rotation
    return np.column_stack(
        [k.fx * pc[:, 0] / pc[:, 2] + k.cx, k.fy * pc[:, 1] / pc[:, 2] + k.cy]
    )


def pixels_to_plane(k: Intrinsics, pose: CameraPose, uv: np.ndarray) -> np.ndarray:
    """Base-frame table points (N, 2) in mm seen at pixels (N, 2): ray-plane intersection."""
    uv = np.asarray(uv, np.float64)
    d_cam = np.column_stack(
        [(uv[:, 0] - k.cx) / k.fx, (uv[:, 1] - k.cy) / k.fy, np.ones(len(uv))]
    )
    d = d_cam @ pose.rotation.T
    if np.any(d[:, 2] >= -1e-9) or pose.centre[2] <= 0:
        raise ValueError("camera does not look down at the table from above")
    s = -pose.centre[2] / d[:, 2]
    return pose.centre[:2] + d[:, :2] * s[:, None]


def footprint(k: Intrinsics, pose: CameraPose, margin_px: float = 0.0) -> np.ndarray:
    """The 4 table points (mm) seen at the image corners, outset by `margin_px`."""
    m = margin_px
    corners = np.array(
        [[-m, -m], [k.width - 1 + m, -m], [k.width - 1 + m, k.height - 1 + m],
         [-m, k.height - 1 + m]], np.float64
    )
    return pixels_to_plane(k, pose, corners)


def ground_px_per_mm(k: Intrinsics, pose: CameraPose) -> float:
    """Image pixels per table millimetre at the image centre."""
    depth = float(pose.centre[2] / max(-pose.rotation[2, 2], 1e-6))
    return k.fx / depth


def view_distance_mm(pose: CameraPose) -> float:
    """Distance along the optical axis from the camera to the table."""
    axis = pose.rotation[:, 2]
    if axis[2] >= -1e-9:
        return float("inf")
    return float(pose.centre[2] / -axis[2])
