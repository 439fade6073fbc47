"""`station tune`: choose a detector configuration for a product from its good images.

Good images come as for `station train` (`--data`: an MVTec-layout folder, of which only
train/good is read, or a plain folder; default the recipe's captured dataset). They are split
(seeded) into fit and held-out images; synthetic defects are drawn on the held-out ones
(station.tuning.faults). Each candidate configuration (station.tuning.candidates, cheapest
first) is fitted on the fit images and scored on held-out good, synthetic and (`--defects`)
real defect images, until `--budget-min` is spent. Results go to `<out>/tune.jsonl` (a rerun
with the same --out resumes), `<out>/tune.md`, `<out>/chosen_histogram.png` and the recipe
variant `<out>/<recipe>-tuned.yaml`. docs/tune.md has the rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def _good_images(rcp: Any, folder: Path, progress: Any) -> tuple[list[Path], list[Any]]:
    """The good files and their preprocessed images, found as `station train` finds them."""
    from station.datasets import training_images
    from station.detectors.engine import load_images
    from station.imaging import image_set_warnings

    files = training_images(folder)
    task = progress.add_task("reading good images", total=len(files))
    images = load_images(files, rcp.preprocess, lambda d, n: progress.update(task, completed=d))
    for line in image_set_warnings(images, "good images"):
        progress.console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    return files, images


def _real_defects(rcp: Any, folder: Path | None) -> tuple[list[Path], list[Any]]:
    """Labelled real defect images from `--defects` (a plain folder of images)."""
    if folder is None:
        return [], []
    from station.datasets import image_files
    from station.detectors.engine import load_images
    from station.tuning.data import TuneError

    if not folder.is_dir():
        raise TuneError(
            f"defects folder {folder} does not exist",
            hint="give --defects a folder of real defective images, or leave it out",
        )
    files = image_files(folder)
    if not files:
        raise TuneError(
            f"no images in defects folder {folder}",
            hint="put the labelled defective images directly in that folder",
        )
    return files, load_images(files, rcp.preprocess)


def _prepare(rcp: Any, data: Path | None, defects: Path | None, seed: int, progress: Any) -> Any:
    """(TuneData, journal header) for this run."""
    from station.detectors.training import data_sha256
    from station.tuning.data import build_data, describe, run_digest, split_good

    folder = data if data is not None else rcp.dataset_dir
    files, images = _good_images(rcp, folder, progress)
    split = split_good(len(files), seed, str(folder))
    d_files, d_images = _real_defects(rcp, defects)
    train_hash = data_sha256(files)
    defects_hash = data_sha256(d_files) if d_files else None
    scale = float(min(rcp.preprocess.size))
    fit_hash = data_sha256([files[i] for i in split.fit])
    tune_data = build_data(files, images, split, scale, seed, d_images, fit_hash)
    header = {
        "recipe": rcp.name,
        "recipe_source": str(rcp.source),
        "recipe_sha256": rcp.sha256,
        "data": str(folder),
        "data_sha256": train_hash,
        "defects": str(defects) if defects is not None else None,
        "n_good": len(files),
        "seed": seed,
        "digest": run_digest(rcp.sha256, train_hash, defects_hash, seed),
        **describe(tune_data),
    }
    return tune_data, header, split


def _candidates(rcp: Any, only: str | None, say: Any) -> tuple[list[Any], bool, list[Any]]:
    """(single candidates to run, whether the ensemble slot runs, (id, why) skipped)."""
    from station.tuning.candidates import (
        ENSEMBLE,
        backbones_of,
        known_ids,
        missing_weights,
        resolution_problem,
        select,
        single_candidates,
    )
    from station.tuning.data import TuneError

    device = rcp.detectors[0].device if rcp.detectors else "auto"
    every = single_candidates(rcp, device)
    chosen = select(every, only)
    ensemble = not only or ENSEMBLE in {w.strip() for w in only.split(",")}
    if not chosen:
        raise TuneError(
            f"--only {only!r} keeps no candidate", hint=f"name detectors or ids: {known_ids(every)}"
        )
    missing = missing_weights(chosen)
    skipped = []
    for name, why in missing.items():
        say(f"[yellow]skipping[/] candidates on backbone {name}: {why}")
    keep = []
    for c in chosen:
        lacking = [b for b in backbones_of(c) if b in missing]
        if lacking:
            skipped.append((c.id, f"no weights for backbone {lacking[0]}"))
        elif coarse := resolution_problem(rcp, c):
            say(f"[yellow]skipping[/] {c.id}: {coarse}")
            skipped.append((c.id, coarse))
        else:
            keep.append(c)
    return keep, ensemble, skipped


def _check_options(budget_min: float, choose_on: str, defects: Path | None) -> None:
    from station.tuning.data import TuneError
    from station.tuning.report import CHOOSE_ON

    if not budget_min > 0:
        raise TuneError(
            f"--budget-min must be more than 0, not {budget_min:g}",
            hint="give the minutes tune may spend, e.g. --budget-min 30",
        )
    if choose_on not in CHOOSE_ON:
        raise TuneError(
            f"--choose-on must be synthetic or real, not {choose_on!r}",
            hint="synthetic (the default) or real (needs --defects)",
        )
    if choose_on == "real" and defects is None:
        raise TuneError(
            "--choose-on real needs labelled real defects",
            hint="give --defects DIR, or choose on synthetic defects",
        )


def _hooks(progress: Any, total: int, done: int) -> Any:
    """Progress bars and one console line per finished candidate."""
    from rich.markup import escape

    from station.cli.app import console
    from station.cli.train import stage_callback
    from station.tuning.run import Hooks

    overall = progress.add_task("candidates", total=total, completed=done)

    def finished(r: dict[str, Any]) -> None:
        progress.advance(overall)
        if r["status"] != "done":
            console.print(f"{r['id']}: [red]failed[/]: {r['error']}", highlight=False)
            return
        fr = r["fr100"].get("false_reject_rate")
        real = f", real AUROC {r['real_auroc']:.3f}" if r.get("real_auroc") is not None else ""
        console.print(
            f"{r['id']}: synthetic AUROC {r['auroc']:.3f}, FR @ 100 % recall "
            f"{'-' if fr is None else f'{fr:.3f}'}{real}, {r['throughput']:.1f} images/s, "
            f"fit {r['fit']['fit_s']:.0f} s",
            highlight=False,
        )

    def scoring(c: Any) -> Any:
        task = progress.add_task(f"{c.id} scoring", total=None)
        return lambda d, n: progress.update(task, completed=d, total=n)

    return Hooks(
        say=lambda line: console.print(escape(line), highlight=False),
        finished=finished,
        fit_progress=lambda c: stage_callback(progress, c.id),
        score_progress=scoring,
    )


def _print_ranking(ranked: list[dict[str, Any]], choose_on: str) -> None:
    from rich.table import Table

    from station.cli.app import console

    table = Table(title=f"candidates, best first (chosen on {choose_on} defects)")
    for col in ("rank", "candidate", "syn AUROC", "FR@100%", "real AUROC", "img/s", "fit s"):
        wide = col == "candidate"
        table.add_column(
            col, justify="left" if wide else "right", overflow="fold", no_wrap=not wide
        )
    for i, r in enumerate(ranked, 1):
        fr = r["fr100"].get("false_reject_rate")
        real = r.get("real_auroc")
        table.add_row(
            str(i), r["id"], f"{r['auroc']:.3f}", "-" if fr is None else f"{fr:.3f}",
            "-" if real is None else f"{real:.3f}", f"{r['throughput']:.1f}",
            f"{r['fit']['fit_s']:.0f}",
        )  # fmt: skip
    console.print(table)


def _tune(opts: dict[str, Any]) -> None:
    from station.calibration.recipes import load_recipe
    from station.cli.app import console
    from station.cli.progress import make_progress
    from station.cli.train import check_device, set_threads
    from station.files import writing
    from station.paths import resolve
    from station.tuning.candidates import recipe_own
    from station.tuning.data import too_few_line
    from station.tuning.journal import Journal
    from station.tuning.report import own_gain, own_line
    from station.tuning.run import Plan, run_all, write_outputs

    _check_options(opts["budget_min"], opts["choose_on"], opts["defects"])
    rcp = load_recipe(opts["recipe"])
    check_device(opts["device"])
    set_threads(opts["threads"])
    out = opts["out"] or resolve(rcp.storage.data_dir) / rcp.name / "tune"
    singles, ensemble, skipped = _candidates(rcp, opts["only"], console.print)
    with make_progress() as progress:
        data, header, split = _prepare(rcp, opts["data"], opts["defects"], opts["seed"], progress)
        guess = too_few_line(split)
        if guess:
            console.print(f"[yellow]{guess}[/]", highlight=False)
        journal = Journal(out, header).open()
        if journal.restarted_from:
            console.print(
                f"{journal.path}: made for other data, recipe or settings (digest "
                f"{journal.restarted_from[:12]}, now {header['digest'][:12]}): starting over",
                highlight=False,
            )
        elif journal.resumed:
            console.print(f"resuming {journal.path}: {journal.resumed} candidate(s) done")
        plan = Plan(rcp, data, singles, ensemble, opts["budget_min"] * 60, out,
                    opts["choose_on"], opts["device"], skipped)  # fmt: skip
        total = len(singles) + int(ensemble)
        done = sum(1 for c in singles if journal.records.get(c.id, {}).get("status") == "done")
        ranked = run_all(plan, journal, _hooks(progress, total, done))
    _print_ranking(ranked, opts["choose_on"])
    facts = {"header": header, "guess": guess, "own": recipe_own(rcp),
             "choose_on": opts["choose_on"], "skipped": plan.skipped,
             "failed": plan.failed}  # fmt: skip
    facts["gain"] = own_gain(facts, ranked)  # for the console, tune.md and the variant
    where = f"the tune's outputs in {plan.out}" + (
        " and beside the recipe" if opts["write_recipe"] else "")
    with writing(where):
        written = write_outputs(plan, ranked, facts, opts["write_recipe"])
    if ranked:
        console.print(f"chosen: [bold]{ranked[0]['id']}[/]" + (" (a guess)" if guess else ""))
        console.print(own_line(facts, ranked))
    for what, path in written.items():
        console.print(f"{what}: {path}", highlight=False)


def register(app: typer.Typer) -> None:
    @app.command("tune")
    def tune_cmd(
        recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe name or path."),
        data: Path | None = typer.Option(
            None,
            "--data",
            "--dataset",
            help="MVTec-layout folder (only train/good is read) or a folder of good images. "
            "Default: the recipe's captured dataset.",
        ),
        defects: Path | None = typer.Option(
            None, "--defects", help="Folder of real defective images (optional)."
        ),
        budget_min: float = typer.Option(30.0, "--budget-min", help="Time budget in minutes."),
        out: Path | None = typer.Option(
            None, "--out", help="Output folder (default data/<recipe>/tune); reruns resume."
        ),
        choose_on: str = typer.Option(
            "synthetic", "--choose-on", help="Rank by synthetic or real (needs --defects) AUROC."
        ),
        only: str | None = typer.Option(
            None, "--only", help="Comma-separated detector names or candidate ids to try."
        ),
        write_recipe: bool = typer.Option(
            False, "--write-recipe", help="Also write <recipe>-tuned.yaml beside the recipe."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed of the split and synthetic defects."),
        device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
    ) -> None:
        """Choose a detector configuration from good images (and optional real defects)."""
        _tune(dict(locals()))
