"""`station demo`: the whole loop on the simulated station, with the user's own commands.

The demo works on a copy of a sim recipe named `<recipe>-demo` (data under
`data/<recipe>-demo/`, calibration `calibration/<recipe>-demo.yaml`, same database), so it never
touches a product's real captures, models or thresholds. Each run replaces the previous demo's
data and parts.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import typer
import yaml

from station.errors import StationError


def _demo_recipe(
    source: str, time_scale: float, sheet_mm: tuple[float, float] | None
) -> tuple[Any, Path]:
    """Write `<data>/<name>-demo/recipe.yaml` from a sim recipe, its sheet `sheet_mm` (None:
    the recipe's) and its poses planned by `station plan-poses` into `poses.yaml` beside it;
    return (recipe, path)."""
    from station.calibration.recipes import load_recipe

    base = load_recipe(source)
    if {base.robot_driver, base.camera_driver, base.line_driver} != {"sim"}:
        raise StationError(
            f"recipe {base.name} does not run on the simulated station",
            hint="the demo needs backend: sim (robot, camera and line I/O on the twin)",
        )
    data = yaml.safe_load(Path(base.source).read_text(encoding="utf-8"))
    name = f"{base.name}-demo"
    data["name"] = name
    data["description"] = f"station demo copy of {base.name}"
    data.setdefault("twin", {})["time_scale"] = time_scale
    data.setdefault("decision", {})["calibration_file"] = f"calibration/{name}.yaml"
    if sheet_mm is not None:
        data.setdefault("sheet", {}).update(width_mm=sheet_mm[0], height_mm=sheet_mm[1])
    robot = data.setdefault("robot", {})
    robot.pop("poses", None)
    robot["poses_file"] = "poses.yaml"  # planned below, beside the demo's recipe
    folder = base.data_dir.parent / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    (folder / "poses.yaml").unlink(missing_ok=True)
    from station.calibration.recipes import parse_recipe as parse_unplanned  # no poses.yaml yet
    from station.errors import RecipeError

    try:
        return parse_unplanned(path.read_text(encoding="utf-8"), str(path), planning=True), path
    except RecipeError as exc:
        sheet = [p for p in exc.problems if p.startswith("sheet.")]
        if sheet_mm is None or not sheet:
            raise
        raise StationError(
            f"--sheet-mm {sheet_mm[0]:g} {sheet_mm[1]:g}: {'; '.join(sheet)}",
            hint="give the sheet's width and height in mm within those bounds",
        ) from None


def _clear_previous(recipe: Any) -> int:
    """Remove the previous demo run: its files and its database rows."""
    from sqlalchemy import delete, func, select

    from station.storage.db import open_database
    from station.storage.models import Calibration, ModelVersion, Part

    db = open_database(recipe.storage.resolved_database_url())
    try:
        with db.session() as s:
            n = s.scalar(select(func.count(Part.id)).where(Part.recipe == recipe.name)) or 0
            for part in s.scalars(select(Part).where(Part.recipe == recipe.name)):
                s.delete(part)  # cascades to shots, detections, reviews
            s.execute(delete(ModelVersion).where(ModelVersion.recipe == recipe.name))
            s.execute(delete(Calibration).where(Calibration.recipe == recipe.name))
    finally:
        db.dispose()
    for sub in ("dataset", "images", "models"):
        shutil.rmtree(recipe.data_dir / sub, ignore_errors=True)
    recipe.calibration_path.unlink(missing_ok=True)
    return n


AT_DEFECT_MM = 2.0  # a sheet-map region this close to a twin defect's drawn box is on it


def _on(truth_box: list[float], region: Any) -> bool:
    """Whether a stored sheet-map region (`SheetDefectRow`) reaches a twin defect's box; a
    region stored without its extent (before 0006) by its centre."""
    from station.geometry.sheet_map import boxes_meet, within_box

    if region.box_mm is not None:
        return boxes_meet(truth_box, region.box_mm, AT_DEFECT_MM)
    return within_box(truth_box, [(region.x_mm, region.y_mm)], AT_DEFECT_MM)


def _outcome(recipe: Any, since_sequence: int) -> dict[str, Any]:
    """Confusion counts of the live parts against the twin's ground truth, and where the
    rejected defective sheets were rejected: at a twin defect (a sheet-map region within
    `AT_DEFECT_MM` of its drawn box) or elsewhere only."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from station.storage.db import open_database
    from station.storage.models import Part, Verdict

    db = open_database(recipe.storage.resolved_database_url(), migrate=False)
    try:
        with db.session() as s:
            parts = s.scalars(
                select(Part)
                .where(
                    Part.recipe == recipe.name, Part.mode == "live", Part.sequence > since_sequence
                )
                .options(selectinload(Part.sheet_defects))
            ).all()
            rows = [(p.verdict, p.ground_truth, p.timings_ms or {}) for p in parts]
            found = [  # per rejected defective sheet: whether each twin defect has a region
                [any(_on(t["bbox_mm"], r) for r in p.sheet_defects) for t in p.twin_defects or []]
                for p in parts if p.ground_truth == "defect" and p.verdict == Verdict.FAIL
            ]  # fmt: skip
            n_truth = sum(len(p.twin_defects or []) for p in parts if p.ground_truth == "defect")
    finally:
        db.dispose()
    rejected = {Verdict.FAIL, Verdict.FAULT}
    good = [v for v, gt, _ in rows if gt == "good"]
    bad = [v for v, gt, _ in rows if gt == "defect"]
    cycle = [t.get("cycle") for _, _, t in rows if t.get("cycle")]
    return {
        "parts": len(rows),
        "good": len(good),
        "defect": len(bad),
        "no_truth": sum(gt not in ("good", "defect") for _, gt, _ in rows),
        "false_rejects": sum(v in rejected for v in good),
        "misses": sum(v not in rejected for v in bad),
        "faults": sum(v == Verdict.FAULT for v, _, _ in rows),
        "at_defect": sum(any(f) for f in found),
        "defects": n_truth,
        "defects_found": sum(sum(f) for f in found),
        "mean_cycle_ms": sum(cycle) / len(cycle) if cycle else None,
    }


def _print_summary(console: Any, recipe: Any, out: dict[str, Any], time_scale: float) -> None:
    """The live run's counts against the twin's truth, and what they count."""
    console.rule("[bold]demo summary[/]")
    n_good, n_bad = out["good"], out["defect"]
    fr = f"{out['false_rejects']}/{n_good}" + (
        f" ({out['false_rejects'] / n_good:.0%})" if n_good else "")
    miss = f"{out['misses']}/{n_bad}" + (f" ({out['misses'] / n_bad:.0%})" if n_bad else "")
    lo, hi = sorted(recipe.twin.defect_size_mm)
    console.print(f"inspected {out['parts']} sheets live: {n_good} good, {n_bad} defective "
                  f"(twin ground truth; defects {lo:g}-{hi:g} mm, the smallest that matters "
                  f"{recipe.coverage.smallest_defect_mm:g} mm)"
                  + (f", {out['no_truth']} faulted before any shot" if out["no_truth"] else ""))
    console.print(f"false rejects: {fr}   missed defects: {miss}   faults: {out['faults']}")
    caught = n_bad - out["misses"]
    console.print(f"caught at the defect: {out['at_defect']} of {caught} rejected defective "
                  f"sheets (a sheet-map region at threshold within {AT_DEFECT_MM:g} mm of a "
                  f"twin defect's drawn box); {caught - out['at_defect']} elsewhere only or by "
                  "a fault")
    console.print(f"twin defects with a region on them: {out['defects_found']}/{out['defects']} "
                  "(every defect of the defective sheets, missed sheets included)")
    if out["mean_cycle_ms"]:
        console.print(f"mean cycle time: {out['mean_cycle_ms'] / 1000:.2f} s per sheet "
                      f"(twin time scale {time_scale:g})")


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="A sim recipe to copy."),
        good: int = typer.Option(16, min=2, help="Good sheets captured for training."),
        labelled: int = typer.Option(36, min=4, help="Labelled sheets for the calibration."),
        parts: int = typer.Option(16, min=1, help="Sheets inspected live."),
        time_scale: float = typer.Option(
            0.25, min=0.0, help="Robot timing of the twin: 1 = real time, 0 = no waiting."
        ),
        sheet_mm: tuple[float, float] = typer.Option(
            (264.0, 204.0),
            "--sheet-mm",
            help="Width and height of the demo's sheets (mm); the poses are planned to cover "
            "them. 264 x 204 takes 2 x 2 shots, the recipe's 300 x 300 sheet 3 x 3.",
        ),
    ) -> None:
        """Run the whole loop on the simulated station: capture, train, calibrate, inspect."""
        from station.cli.app import app as root
        from station.cli.app import console
        from station.storage.db import open_database

        t0 = time.monotonic()
        demo_recipe, path = _demo_recipe(recipe, time_scale, sheet_mm)
        removed = _clear_previous(demo_recipe)
        rp = str(path)
        console.rule(f"[bold]station demo[/] on the simulated station: recipe {demo_recipe.name}")
        if removed:
            console.print(f"removed the previous demo run ({removed} parts)")

        def step(title: str, *args: str) -> int:
            console.rule(f"[bold cyan]{title}[/]  [dim]station {' '.join(args)}[/]")
            code = root(args=list(args), standalone_mode=False)  # a typer.Exit comes back
            return code if isinstance(code, int) else 0

        step("0/5 plan the poses over the whole sheet", "plan-poses", "--recipe", rp, "--out",
             str(path.parent / "plan-poses.png"))
        step("1/5 capture good sheets", "capture", "--recipe", rp, "--count", str(good),
             "--label", "good")
        step("2/5 train the detectors", "train", "--recipe", rp)
        step("3/5 capture labelled sheets", "capture", "--recipe", rp, "--count",
             str(labelled), "--label", "labelled", "--seed", str(demo_recipe.twin.seed + 10_000))
        step("4/5 calibrate the threshold", "calibrate-threshold", "--recipe", rp)
        db = open_database(demo_recipe.storage.resolved_database_url(), migrate=False)
        with db.session() as s:
            before = db.next_sequence(s, demo_recipe.name) - 1
        db.dispose()
        failure: StationError | None = None
        try:  # the summary below is printed even when the live run ends on a fault
            code = step("5/5 inspect live", "inspect", "--live", "--recipe", rp, "--count",
                        str(parts), "--no-view")
        except StationError as exc:
            failure, code = exc, exc.exit_code

        _print_summary(console, demo_recipe, _outcome(demo_recipe, before), time_scale)
        console.print(f"finished in {time.monotonic() - t0:.0f} s\n")
        console.print("where to look next:")
        console.print(f"  review rejects:  station review --recipe {rp}   "
                      "(http://127.0.0.1:8080)")
        console.print(f"  threshold:       {demo_recipe.calibration_path} and its ROC plot")
        console.print(f"  shots, heatmaps: {demo_recipe.images_dir}")
        console.print(f"  training data:   {demo_recipe.dataset_dir}")
        console.print(f"  database:        {demo_recipe.storage.resolved_database_url()}")
        if failure is not None:
            raise failure
        if code:
            raise typer.Exit(code)
