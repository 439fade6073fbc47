"""The digital twin: a simulated cell that renders woven glass-fibre sheets as the camera sees them.

`TwinWorld` holds the sheet, the TCP and the faults; `SimRobot`, `SimCamera` and `SimLine` speak
the `station.interfaces` protocols on top of it. `render_part_shots` renders one part's
shots straight from a seed, without robot timing (e.g. to feed the pylon camera emulator).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the renderer (numpy, OpenCV) loads on first use: fake_ur lives here too
    import numpy as np

    from station.recipe import Recipe

__all__ = [
    "CAPTURE_SEED_OFFSET", "FAULT_KINDS", "SimCamera", "SimLine", "SimRobot", "TwinWorld",
    "derive_seed", "render_part_shots",
]

# The twin's line brings live sheet k from (twin.seed, k). Sheets made for training and
# calibration (a capture, the emulator's capture frames) draw by default from twin.seed + this,
# so that a live run never inspects the very sheets its detector learnt from.
CAPTURE_SEED_OFFSET = 50_000


def render_part_shots(
    recipe: Recipe, part_seed: int, defective: bool | None = None, card: bool = False
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(pose name, image, mask) for each recipe pose of the sheet made from `part_seed`.

    `defective` None draws the sheet at the recipe's defect rate; True/False forces it. With
    `card`, the drift reference card's shot follows (monitoring.drift.reference: its pose, the
    same lamp, lens and sensor; an empty mask).
    """
    from station.recipe import card_pose
    from station.twin.world import TwinWorld, pose_tcp

    world = TwinWorld(recipe)
    world.present(world.make_sheet(part_seed, defective), part_id=f"seed-{part_seed}")
    poses = [*recipe.robot.poses, *([card_pose(recipe)] if card else [])]
    out = []
    for index, pose in enumerate(poses):
        shot = world.render(pose_tcp(pose), noise_seed=[part_seed, 7, index])
        out.append((pose.name, shot.image, shot.mask))
    return out


def __getattr__(name: str):  # noqa: ANN202 (lazy imports)
    if name in ("TwinWorld", "FAULT_KINDS", "derive_seed", "pose_tcp"):
        from station.twin import world

        return getattr(world, name)
    if name == "SimRobot":
        from station.twin.robot import SimRobot

        return SimRobot
    if name == "SimCamera":
        from station.twin.camera import SimCamera

        return SimCamera
    if name == "SimLine":
        from station.twin.line import SimLine

        return SimLine
    raise AttributeError(name)
