"""`station train`: fit the recipe's detectors on good shots and save versioned models.

Training data: `--data DIR` (an MVTec-layout folder, using train/good, or a plain folder of
images), else the recipe's captured dataset (`<data>/<recipe>/dataset/train/good`). Images go
through the recipe's preprocessing. Each detector holds out its own validation split of good
images; their score statistics are stored in the artifact and in the ModelVersion row.
With `monitoring.material_check` on (the default), the material check's model is fitted on the
same images and saved beside the models (station.monitoring.material).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer

from station.cli.progress import make_progress


def set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads (shared machines); None keeps torch's default."""
    if threads is None:
        return
    import torch

    from station.errors import StationError

    if threads < 1:
        raise StationError(f"--threads must be >= 1, not {threads}")
    torch.set_num_threads(threads)


def check_device(device: str | None, detectors: Sequence[Any] = ()) -> None:
    """A `--device`, or without one a device of `detectors` (recipe entries), that cannot run
    is an error before any image is read."""
    from station.detectors.backbones import resolve_device

    wanted = {device} if device is not None else {d.device for d in detectors}
    for spec in sorted(wanted):
        if spec.strip().lower() != "auto":  # auto: decided, and said, later
            resolve_device(spec)


def selected_detectors(recipe: Any, detector: str | None) -> list[Any]:
    """The recipe's detector entries, or the one named (StationError if the recipe lacks it)."""
    from station.errors import StationError

    if detector is None:
        return list(recipe.detectors)
    names = [d.name for d in recipe.detectors]
    if detector not in names:
        raise StationError(
            f"recipe {recipe.name} has no detector {detector!r}; it runs: {', '.join(names)}",
            hint="add it under detectors: in the recipe, or pick one of those",
        )
    return [recipe.detector(detector)]


def stage_callback(progress: Any, prefix: str) -> Any:
    """A ProgressFn (stage, done, total) that shows one rich task per stage, named
    `prefix stage` (just the stage when `prefix` is empty)."""
    tasks: dict[str, Any] = {}

    def cb(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            label = f"{prefix} {stage}" if prefix else stage
            tasks[stage] = progress.add_task(label, total=total)
        progress.update(tasks[stage], completed=done, total=total)

    return cb


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_cmd(
        recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe name or path."),
        detector: str | None = typer.Option(
            None, "--detector", "-d", help="Train only this detector of the recipe."
        ),
        data: Path | None = typer.Option(
            None,
            "--data",
            "--dataset",
            help="MVTec-layout folder (uses train/good) or a folder of good images. "
            "Default: the recipe's captured dataset.",
        ),
        device: str | None = typer.Option(
            None, "--device", help="Override the recipe's device: auto, cpu, cuda, cuda:N."
        ),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
        register_db: bool = typer.Option(
            True, "--db/--no-db", help="Record a ModelVersion row in the recipe's database."
        ),
    ) -> None:
        """Train the recipe's detectors on good images and save versioned model files."""
        from station.calibration.recipes import load_recipe
        from station.cli.app import console
        from station.datasets import training_images
        from station.detectors.engine import load_images
        from station.detectors.training import data_sha256
        from station.imaging import image_set_warnings
        from station.paths import resolve

        rcp = load_recipe(recipe)
        targets = selected_detectors(rcp, detector)
        check_device(device, targets)
        if register_db:  # a database that cannot take the record fails now, not after training
            from station.storage.db import open_database

            open_database(rcp.storage.resolved_database_url()).dispose()
        set_threads(threads)
        folder = data if data is not None else rcp.dataset_dir
        files = training_images(folder)
        console.print(
            f"recipe [bold]{rcp.name}[/]: {len(files)} good images from {folder}, "
            f"size {rcp.preprocess.size[0]} x {rcp.preprocess.size[1]}"
        )
        with make_progress() as progress:
            task = progress.add_task("reading images", total=len(files))
            images = load_images(
                files, rcp.preprocess, lambda d, n: progress.update(task, completed=d)
            )
            for line in image_set_warnings(images, "training images"):
                console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
            train_hash = data_sha256(files)
            trained = train_all(rcp, targets, files, images, device, progress, train_hash)

        data_root = resolve(rcp.storage.data_dir)
        if register_db:
            _record_versions(rcp, trained, data_root)

        _print_trained(rcp.name, trained)
        for t in trained:
            console.print(f"saved {t.path}")
        if rcp.monitoring.material_check.enabled:  # the material check's model, same images
            _fit_material(rcp, images, train_hash, device, files)
        console.print(
            "next: calibrate thresholds on labelled parts: "
            f"station calibrate-threshold --recipe {recipe}"
        )


def train_all(
    rcp: Any,
    targets: list[Any],
    files: list[Path],
    images: list[Any],
    device: str | None,
    progress: Any,
    train_hash: str,
) -> list[Any]:
    """Train each target detector; the model files go into the models folder together once
    all are trained, so that a failure leaves the live models as they were."""
    import os
    import secrets

    from station.detectors.artifact import artifact_path
    from station.detectors.training import train_and_save

    staged: list[Path] = []
    trained = []
    try:
        for det_cfg in targets:
            tmp = rcp.models_dir / det_cfg.name / f".training-{secrets.token_hex(6)}.pt"
            staged.append(tmp)
            cb = stage_callback(progress, det_cfg.name)
            trained.append(
                train_and_save(
                    rcp, det_cfg, files, images, tmp, device, progress=cb, train_hash=train_hash
                )
            )
        for t in trained:  # the version is known once trained
            final = artifact_path(rcp, t.meta["detector"], t.version)
            os.replace(t.path, final)
            t.path = final
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)  # gone once moved
    return trained


def _fit_material(
    rcp: Any, images: list[Any], train_hash: str, device: str | None, files: list[Path]
) -> None:
    """Fit and save the material check's model (station.monitoring.material)."""
    from station.cli.app import console
    from station.errors import StationError
    from station.monitoring.material import FOLDS, fit_material, part_of

    try:
        fitted = fit_material(rcp, images, train_hash, device, [part_of(f) for f in files])
    except StationError as exc:  # the detectors are saved; inspection will name the fix
        console.print(f"[yellow]warning:[/] material check not fitted: {exc}")
        return
    meta = fitted.model.meta
    held = meta["held_out"]
    console.print(
        f"material check: threshold {fitted.model.threshold:.3g} (held-out good shots of "
        f"other parts: median {held['median']:.3g}, max {held['max']:.3g}); saved {fitted.path}"
    )
    if meta["folds_by"] != "part":
        console.print(
            f"[yellow]warning:[/] the material check saw {meta['n_parts']} good part(s); with "
            f"fewer than {FOLDS} its threshold ignores part-to-part variation and good parts "
            "will fault as another material: capture more good parts and retrain"
        )


# Fewer training images than this: train says so (docs/few_shot.md: I-AUROC falls 0.04-0.18
# from all images to 2 on the development materials, and varies with the draw).
FEW_IMAGES = 10


def _print_trained(recipe_name: str, trained: list[Any]) -> None:
    """One table row per trained model: version, images, held-out good scores, time."""
    from rich.table import Table

    from station.cli.app import console

    table = Table(title=f"trained models for recipe {recipe_name}")
    for col in ("detector", "version", "images", "good score mean ± std", "q95", "seconds"):
        table.add_column(col)
    for t in trained:
        gs = t.meta["good_scores"]
        stats = f"{gs['mean']:.4g} ± {gs['std']:.3g}" if gs.get("n") else "(no held-out)"
        table.add_row(
            t.meta["detector"],
            t.version,
            str(t.meta["n_train_images"]),
            stats,
            f"{gs['q95']:.4g}" if gs.get("n") else "-",
            f"{t.report.seconds:.1f}",
        )
    console.print(table)
    for t in trained:
        n, held = int(t.meta["n_train_images"]), int(t.meta["good_scores"].get("n") or 0)
        if n - held < FEW_IMAGES:
            console.print(
                f"[yellow]warning:[/] {t.meta['detector']} learnt from {n - held} image(s) "
                f"({held} of {n} held out for its good-score statistics): with fewer than "
                f"{FEW_IMAGES} the model is weak and varies with the draw (docs/few_shot.md); "
                "capture more good sheets",
                highlight=False,
            )


def _record_versions(rcp: Any, trained: list[Any], data_root: Path) -> None:
    from station.storage.db import open_database
    from station.storage.promotions import record_trained_models

    db = open_database(rcp.storage.resolved_database_url())
    try:
        record_trained_models(db, rcp.name, data_root, trained)
    finally:
        db.dispose()
