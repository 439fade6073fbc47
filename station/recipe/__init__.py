"""Recipes: one YAML file per product, validated into a `Recipe`.

- `model`: the recipe's sections and the `Recipe` itself (what each field means, its checks);
- `devices`: one typed section per robot, camera and line driver, chosen by `driver`;
- `quality`: monitoring and retraining sections (reference card, drift, material check);
- `base`: shared field types and the strict base model;
- `yaml_io`: bounded, safe YAML reading;
- `load`: `find_recipe`, `parse_recipe`, `load_recipe` (`extends:`, poses files, errors by field).
"""

from station.recipe.base import Pose
from station.recipe.devices import (
    CameraConfig,
    LensConfig,
    LineIOConfig,
    PylonCameraConfig,
    RobotConfig,
    SimCameraConfig,
    SimRobotConfig,
    URLineConfig,
    URRobotConfig,
)
from station.recipe.load import find_recipe, load_recipe, parse_recipe, poses_path
from station.recipe.model import (
    DecisionConfig,
    DetectorConfig,
    PreprocessConfig,
    Recipe,
    TilingConfig,
)
from station.recipe.quality import CARD, card_pose

__all__ = [
    "CARD",
    "CameraConfig",
    "DecisionConfig",
    "DetectorConfig",
    "LensConfig",
    "LineIOConfig",
    "Pose",
    "PreprocessConfig",
    "PylonCameraConfig",
    "Recipe",
    "RobotConfig",
    "SimCameraConfig",
    "SimRobotConfig",
    "TilingConfig",
    "URLineConfig",
    "URRobotConfig",
    "card_pose",
    "find_recipe",
    "load_recipe",
    "parse_recipe",
    "poses_path",
]
