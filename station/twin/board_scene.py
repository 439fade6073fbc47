"""The twin's ChArUco board on the table, as the TRUE camera sees it (distortion included).

Each output pixel is sampled 3 x 3 times: the sample's distorted position is mapped to its
pinhole pixel (`TrueCamera.ideal_map`), then through the inverse plane homography to the table
and into the board texture. Then vignetting, focus blur, shot and read noise as for sheets.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from station.recipe import CameraConfig
from station.twin import optics
from station.twin.render import (
    DN_PER_RADIANCE,
    FULL_WELL_E,
    READ_NOISE_E,
    Lighting,
    Shot,
    blur_sigma_px,
)
from station.twin.truth import BoardOnTable, TrueCamera

SUPERSAMPLE = 3
PX_PER_SQUARE = 200
WHITE, BLACK, TABLE = 0.85, 0.06, 0.35


class BoardScene:
    def __init__(self, placed: BoardOnTable) -> None:
        self.placed = placed
        img = placed.board.image(PX_PER_SQUARE).astype(np.float32) / 255.0
        self.texture = BLACK + (WHITE - BLACK) * img
        self.to_board = np.linalg.inv(placed.board_to_base())

    def render(self, truth: TrueCamera, cam: CameraConfig, tcp: np.ndarray, light: Lighting,
               noise_seed: Any, exposure_us: float | None = None,
               gain_db: float | None = None) -> Shot:
        k = truth.intrinsics
        pose = truth.pose(tcp)
        s = SUPERSAMPLE
        ideal = truth.ideal_map(s)
        # pinhole pixel -> table (x, y) -> board (x, y) mm -> texture pixel
        to_table = np.linalg.inv(optics.plane_homography(k, pose))
        b = self.to_board
        board2d = np.array([[b[0, 0], b[0, 1], b[0, 3]], [b[1, 0], b[1, 1], b[1, 3]],
                            [0, 0, 1.0]])
        ppm = PX_PER_SQUARE / self.placed.board.square_mm
        tex = np.array([[ppm, 0, -0.5], [0, ppm, -0.5], [0, 0, 1.0]])
        g = (tex @ board2d @ to_table).astype(np.float64)
        u, v = ideal[..., 0].astype(np.float64), ideal[..., 1].astype(np.float64)
        w = g[2, 0] * u + g[2, 1] * v + g[2, 2]
        mx = ((g[0, 0] * u + g[0, 1] * v + g[0, 2]) / w).astype(np.float32)
        my = ((g[1, 0] * u + g[1, 1] * v + g[1, 2]) / w).astype(np.float32)
        alb = cv2.remap(self.texture, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=TABLE)
        alb = alb.reshape(k.height, s, k.width, s).mean(axis=(1, 3))

        uu = np.arange(k.width, dtype=np.float32)[None, :]
        vv = np.arange(k.height, dtype=np.float32)[:, None]
        r2 = ((uu - k.cx) ** 2 + (vv - k.cy) ** 2) / np.float32(k.fx * k.fx)
        rc2 = ((k.cx**2 + k.cy**2) / (k.fx * k.fx)) or 1.0
        vig = (1.0 / (1.0 + r2) ** 2) * (1.0 - light.vignetting * r2 / rc2)
        rad = (alb * (light.ambient + light.ring) * vig).astype(np.float32)
        sigma = blur_sigma_px(cam, pose, light.base_blur_px)
        rad = cv2.GaussianBlur(rad, (0, 0), sigma)

        exposure_us = cam.exposure_us if exposure_us is None else exposure_us
        gain = 10 ** ((cam.gain_db if gain_db is None else gain_db) / 20.0)
        electrons = np.clip(rad * DN_PER_RADIANCE * (exposure_us / light.reference_exposure_us),
                            0, None) * (FULL_WELL_E / 255.0)
        rng = np.random.default_rng(noise_seed)
        noisy = electrons + rng.standard_normal(electrons.shape, np.float32) * np.sqrt(
            electrons + READ_NOISE_E**2)
        dn = np.minimum(noisy, FULL_WELL_E * 1.05) * (255.0 / FULL_WELL_E) * gain
        image = np.clip(np.round(dn), 0, 255).astype(np.uint8)
        if cam.pixel_format == "RGB8":
            image = np.repeat(image[..., None], 3, axis=2)
        return Shot(image, np.zeros((k.height, k.width), np.uint8), [], sigma)
