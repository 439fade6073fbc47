"""The exact camera of a simulated cell: what the twin renders with, for the sheet map.

On the twin the camera model need not be calibrated nor guessed: the twin's true camera
(`station.twin.truth.TrueCamera`, from `twin.params.camera_truth`, else the nominal one) is
the model. A real camera has none here (`station.cellcal.store` gives its calibrated or nominal
model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from station.devices.drivers import CAMERAS
from station.errors import RecipeError
from station.recipe import Recipe
from station.twin.truth import TrueCamera


@dataclass(frozen=True)
class ExactCamera:
    matrix: np.ndarray  # 3x3
    dist: np.ndarray  # k1 k2 p1 p2 k3
    tcp_to_camera: np.ndarray  # 4x4: the camera frame in the reported TCP's frame
    width: int
    height: int


def twin_camera(recipe: Recipe) -> ExactCamera | None:
    """The twin's true camera when the recipe's camera is simulated; None for a real one."""
    if recipe.camera_driver not in CAMERAS.twin:
        return None
    try:
        truth = TrueCamera.from_recipe(recipe)
    except ValueError as exc:
        raise RecipeError(recipe.source or recipe.name, [f"twin.params.{exc}"]) from None
    mount = np.eye(4) if truth.tcp_to_camera is None else np.asarray(truth.tcp_to_camera)
    k = truth.intrinsics
    return ExactCamera(truth.matrix, np.asarray(truth.dist, np.float64).copy(), mount,
                       k.width, k.height)
