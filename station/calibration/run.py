"""A recipe's threshold calibration end to end, as `station calibrate-threshold` runs it.

`labelled_scores` gets the labelled part scores (operator reviews in the database, or an
MVTec-layout folder scored by the trained detectors; with `combine_poses: sheet_map` the caller
gives the sheet map's camera model, which this layer cannot load: station.cellcal is a sibling
layer, the CLI passes `inspection_camera(recipe)`); `calibrate_recipe` applies the policy
(`policies.resolve_policy`) with the recipe's decision rule and compares the other policies.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from station.calibration.bootstrap import DEFAULT_LEVEL, DEFAULT_RESAMPLES, DEFAULT_SEED
from station.calibration.core import CalibrationResult, PartScores, calibrate
from station.calibration.policies import Policy, comparison_policies
from station.calibration.scores import ProgressFn, score_folder, scores_from_reviews
from station.errors import CalibrationError

if TYPE_CHECKING:
    from station.geometry.sheet_map import CameraLike
    from station.recipe import Recipe


def check_label_source(dataset: Path | None, from_reviews: bool) -> None:
    if dataset is not None and from_reviews:
        raise CalibrationError(
            "--dataset and --from-reviews are two different label sources",
            hint="give one of them (neither: the recipe's captured dataset)",
        )


def labelled_folder(recipe: Recipe, dataset: Path | None) -> Path:
    """The folder whose test images are scored: `dataset`, else the recipe's captures."""
    root = dataset if dataset is not None else recipe.dataset_dir
    if dataset is not None and not dataset.is_dir():
        raise CalibrationError(f"--dataset {dataset} is not a folder", hint="check the path")
    if not (root / "test").is_dir():
        raise CalibrationError(
            f"no labelled parts in {root} (no test/ folder)",
            hint=f"capture sheets you know with station capture --recipe {recipe.name} "
            "--label test-good and --label test-defect (--label labelled on the twin), "
            "or give --dataset an MVTec-layout folder",
        )
    return root


def labelled_scores(
    recipe: Recipe,
    *,
    dataset: Path | None = None,
    from_reviews: bool = False,
    database_url: str | None = None,
    batch_size: int = 16,
    progress: ProgressFn | None = None,
    camera: CameraLike | None = None,
) -> tuple[PartScores, str]:
    """(labelled part scores, where they come from in words) for a calibration; `camera`: the
    sheet map's camera model (needed with combine_poses sheet_map)."""
    check_label_source(dataset, from_reviews)
    db_url = database_url or recipe.storage.resolved_database_url()
    if from_reviews:
        return scores_from_reviews(recipe, db_url), f"reviews in {db_url.split('@')[-1]}"
    root = labelled_folder(recipe, dataset)
    source = "dataset" if dataset is not None else "capture"
    data = score_folder(
        recipe, root, source, batch_size=batch_size, progress=progress, camera=camera
    )
    return data, str(root)


def calibrate_recipe(
    recipe: Recipe,
    data: PartScores,
    policy: Policy,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
    oob_resamples: int = 200,
) -> CalibrationResult:
    """Thresholds under `policy` with the recipe's decision rule, other policies compared."""
    return calibrate(
        data,
        policy,
        recipe=recipe.name,
        combine_poses=recipe.decision.combine_poses,
        combine_detectors=recipe.decision.combine_detectors,
        resamples=resamples,
        level=level,
        seed=seed,
        oob_resamples=oob_resamples,
        compare=comparison_policies(recipe.decision),
    )
