"""The twin camera's TRUE optics and mounting, which cell calibration must recover.

Set under `twin.params` (all optional; without them the twin is the recipe's nominal camera,
an ideal pinhole at the TCP, and renders exactly as before):

    camera_truth:                       # pixels; distortion in OpenCV's model
      {fx: 3490.0, fy: 3488.0, cx: 322.0, cy: 254.5,
       k1: -0.12, k2: 0.08, k3: 0.0, p1: 0.0005, p2: -0.0003,
       mount_offset_mm: [3.0, 0.0, 95.0],     # camera optical centre in the flange frame
       mount_rotvec_rad: [0.0, 0.0175, 0.0]}  # camera axes in the flange frame
    calibration_board:                  # the ChArUco board lying on the table
      {squares_x: 12, squares_y: 9, square_mm: 5.0, marker_mm: 3.75,
       dictionary: DICT_4X4_100, centre_mm: [400.0, 0.0], yaw_deg: 0.0}
      # unset fields: the recipe's default board (station.geometry.charuco.recipe_board); markers
      # 0.75 of the squares

The robot reports the TCP the recipe's nominal `tcp_offset_mm` defines; the true camera is at
flange * true mount, i.e. TCP * inverse(nominal mount) * true mount.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from station.geometry.charuco import BoardDef, recipe_board
from station.geometry.ur_poses import pose_to_matrix
from station.recipe import Recipe
from station.twin import optics

DIST_KEYS = ("k1", "k2", "p1", "p2", "k3")  # OpenCV's order


def transform(position: Any, rotvec: Any) -> np.ndarray:
    """4x4 rigid transform from a position and a rotation vector."""
    return pose_to_matrix([*np.asarray(position, np.float64), *np.asarray(rotvec, np.float64)])


@dataclass(frozen=True)
class TrueCamera:
    intrinsics: optics.Intrinsics
    dist: np.ndarray = field(default_factory=lambda: np.zeros(5))  # k1 k2 p1 p2 k3
    # TCP -> true camera (identity when the mounting is the nominal one)
    tcp_to_camera: np.ndarray | None = None

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> TrueCamera:
        """The truth from `twin.params.camera_truth`; ValueError names a bad key."""
        given = dict(recipe.twin.params.get("camera_truth") or {})
        known = {"fx", "fy", "cx", "cy", *DIST_KEYS, "mount_offset_mm", "mount_rotvec_rad"}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"camera_truth: unknown key(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        k0 = optics.Intrinsics.from_camera(recipe.camera)
        k = optics.Intrinsics(float(given.get("fx", k0.fx)), float(given.get("fy", k0.fy)),
                              float(given.get("cx", k0.cx)), float(given.get("cy", k0.cy)),
                              k0.width, k0.height)
        if min(k.fx, k.fy) <= 0:
            raise ValueError("camera_truth: fx and fy must be positive")
        dist = np.array([float(given.get(n, 0.0)) for n in DIST_KEYS])
        rob = recipe.robot
        mount = None
        if "mount_offset_mm" in given or "mount_rotvec_rad" in given:
            nominal = transform(rob.tcp_offset_mm, rob.tcp_offset_rotvec_rad)
            true = transform(given.get("mount_offset_mm", rob.tcp_offset_mm),
                             given.get("mount_rotvec_rad", rob.tcp_offset_rotvec_rad))
            mount = np.linalg.inv(nominal) @ true
        return cls(k, dist, mount)

    @property
    def distorted(self) -> bool:
        return bool(np.any(self.dist != 0))

    @property
    def matrix(self) -> np.ndarray:
        return self.intrinsics.matrix

    def pose(self, tcp: np.ndarray) -> optics.CameraPose:
        """The true camera's pose when the robot reports `tcp`."""
        p = optics.CameraPose.from_tcp(tcp)
        if self.tcp_to_camera is None:
            return p
        m = self.tcp_to_camera
        return optics.CameraPose(p.centre + p.rotation @ m[:3, 3], p.rotation @ m[:3, :3])

    def margin_px(self, base: float) -> float:
        """Footprint margin that still covers what the distorted image corners see."""
        if not self.distorted:
            return base
        k = self.intrinsics
        corners = np.array([[0, 0], [k.width - 1, 0], [0, k.height - 1],
                            [k.width - 1, k.height - 1]], np.float64)
        ideal = self.ideal_pixels(corners)
        return base + float(np.abs(ideal - corners).max())

    def ideal_pixels(self, uv: np.ndarray) -> np.ndarray:
        """Pinhole pixels (N, 2) of the rays seen at distorted pixels `uv` (N, 2)."""
        k = self.matrix
        pts = np.asarray(uv, np.float64).reshape(-1, 1, 2)
        crit = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-10)
        out = cv2.undistortPointsIter(pts, k, self.dist, None, k, crit)
        return out.reshape(-1, 2)

    def ideal_map(self, supersample: int = 1) -> np.ndarray:
        """(H*s, W*s, 2) float32: the pinhole pixel behind each (sub)pixel of the image."""
        return _ideal_map(self.intrinsics, tuple(self.dist.tolist()), supersample)


@functools.lru_cache(maxsize=4)
def _ideal_map(k: optics.Intrinsics, dist: tuple[float, ...], s: int) -> np.ndarray:
    off = (np.arange(s) + 0.5) / s - 0.5
    u = (np.arange(k.width)[:, None] + off[None, :]).ravel()
    v = (np.arange(k.height)[:, None] + off[None, :]).ravel()
    uu, vv = np.meshgrid(u, v)
    cam = TrueCamera(k, np.asarray(dist))
    ideal = cam.ideal_pixels(np.column_stack([uu.ravel(), vv.ravel()]))
    return ideal.reshape(len(v), len(u), 2).astype(np.float32)


@dataclass(frozen=True)
class BoardOnTable:
    board: BoardDef
    centre_mm: tuple[float, float]
    yaw_deg: float = 0.0

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> BoardOnTable:
        given = dict(recipe.twin.params.get("calibration_board") or {})
        d = recipe_board(recipe)
        try:
            square = float(given.pop("square_mm", d.square_mm))
            board = BoardDef(int(given.pop("squares_x", d.squares_x)),
                             int(given.pop("squares_y", d.squares_y)), square,
                             float(given.pop("marker_mm", 0.75 * square)),
                             str(given.pop("dictionary", d.dictionary)))
            centre = tuple(float(v) for v in given.pop("centre_mm", recipe.sheet.center_mm))
            yaw = float(given.pop("yaw_deg", 0.0))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"calibration_board: {exc}") from None
        if given:
            raise ValueError(f"calibration_board: unknown key(s) {', '.join(sorted(given))}")
        if board.problems():
            raise ValueError("calibration_board: " + "; ".join(board.problems()))
        return cls(board, (centre[0], centre[1]), yaw)

    def board_to_base(self) -> np.ndarray:
        """4x4: board frame -> base frame. The board's centre lies at `centre_mm`, z = 0; board
        x runs along base x turned by the yaw, board z points down into the table."""
        a = math.radians(self.yaw_deg)
        r = np.array([[math.cos(a), math.sin(a), 0], [math.sin(a), -math.cos(a), 0],
                      [0, 0, -1.0]])
        w, h = self.board.size_mm
        t = np.eye(4)
        t[:3, :3] = r
        t[:3, 3] = np.array([*self.centre_mm, 0.0]) - r @ np.array([w / 2, h / 2, 0.0])
        return t


def perturbed_truth(recipe: Recipe, seed: int, offset_mm: float = 3.0, offset_deg: float = 1.0,
                    distortion: bool = True) -> dict[str, Any]:
    """`twin.params` for a camera that is not the nominal one: focal length and principal point
    off by up to ~1 % and a few pixels, lens distortion, and a mounting moved by `offset_mm`
    and turned by `offset_deg` (random directions), plus a board placed a little off centre.
    For calibration tests and benchmarks."""
    rng = np.random.default_rng([seed, 19])
    k = optics.Intrinsics.from_camera(recipe.camera)
    fx = k.fx * (1 + rng.uniform(-0.01, 0.01))
    truth: dict[str, Any] = {
        "fx": fx, "fy": fx * (1 + rng.uniform(-0.002, 0.002)),
        "cx": k.cx + rng.uniform(-5, 5), "cy": k.cy + rng.uniform(-5, 5),
    }
    if distortion:
        truth |= {"k1": rng.uniform(-0.3, -0.1), "k2": rng.uniform(-0.5, 0.5),
                  "p1": rng.uniform(-8e-4, 8e-4), "p2": rng.uniform(-8e-4, 8e-4)}
    d = rng.normal(size=3)
    axis = rng.normal(size=3)
    nominal = transform(recipe.robot.tcp_offset_mm, recipe.robot.tcp_offset_rotvec_rad)
    turn = transform(d / np.linalg.norm(d) * offset_mm,
                     axis / np.linalg.norm(axis) * math.radians(offset_deg))
    true = nominal @ turn
    truth["mount_offset_mm"] = [float(v) for v in true[:3, 3]]
    truth["mount_rotvec_rad"] = [float(v) for v in cv2.Rodrigues(true[:3, :3])[0].ravel()]
    cx, cy = recipe.sheet.center_mm
    board = {"centre_mm": [cx + rng.uniform(-5, 5), cy + rng.uniform(-5, 5)],
             "yaw_deg": rng.uniform(-10, 10)}
    return {"camera_truth": truth, "calibration_board": board}
