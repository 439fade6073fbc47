"""`station capture`: drive robot and camera through the recipe's poses and store the shots.

The capture itself (files in MVTec-AD layout, Part and Shot rows) is
`station.inspection.capture.run_capture`; this module parses the options and prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from station.errors import StationError
from station.geometry.coverage import region_rect
from station.geometry.placement import SIDES

if TYPE_CHECKING:
    from station.geometry.placement import Placement
    from station.recipe import Recipe


def register(app: typer.Typer) -> None:
    @app.command("capture")
    def capture(
        recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name or path."),
        count: int = typer.Option(1, "--count", "-n", help="Number of parts (sheets)."),
        label: str = typer.Option(
            "good", "--label",
            help="good: defect-free sheets for training (train/good); test-good, test-defect: "
            "sheets you know to be good or defective, held out for thresholds (test/good, "
            "test/defect); labelled: the twin's sheets with ground-truth masks (test/); "
            "unlabelled: no labels.",
        ),
        out: str | None = typer.Option(
            None, "--out", help="Dataset folder (default: data/<recipe>/dataset)."
        ),
        seed: int | None = typer.Option(
            None, "--seed",
            help="Twin seed of the captured sheets (default: twin.seed + 50000; twin.seed itself "
            "gives the sheets station inspect --live brings).",
        ),
    ) -> None:
        """Move through the recipe's poses for each part and store one shot per pose."""
        from station.calibration.recipes import load_recipe
        from station.cli.app import console, err_console
        from station.cli.progress import make_progress
        from station.devices.factory import uses_twin
        from station.inspection.capture import check_arguments, run_capture

        rec = load_recipe(recipe)
        check_arguments(rec, count, label, seed)
        if seed == rec.twin.seed and uses_twin(rec):
            err_console.print(
                f"[bold yellow]warning:[/] --seed {seed} is twin.seed: these are the sheets "
                "station inspect --live brings, so a detector trained or calibrated on them is "
                "judged live on its own sheets; leave --seed out", highlight=False, soft_wrap=True)
        total = count * len(rec.robot.poses)
        stored: list[int] = []
        bar = make_progress("[bold]capture[/] {task.description}", "shots", err_console)
        with bar as progress:
            task = progress.add_task(f"{rec.name} ({label})", total=total)

            def on_shot(seq: int, pose: str) -> None:
                progress.update(task, advance=1, description=f"{rec.name} p{seq:06d} {pose}")

            try:
                res = run_capture(rec, count, label, out, seed, on_shot=on_shot,
                                  on_part=stored.append)
            except StationError as exc:
                exc.message = (f"{exc.message} ({len(stored)} of {count} parts were captured "
                               "before it and are kept)")
                raise
        console.print(
            f"[green]captured[/] {len(res.sequences)} parts, {res.shots} shots "
            f"({res.defect_shots} in test/defect, {res.defect_parts} defective sheets) in "
            f"{res.seconds:.1f} s -> {res.root}"
        )
        if res.placements:
            placement_report(rec, res.placements)
        if res.clipped_shots:
            console.print(
                f"[bold yellow]warning:[/] {res.clipped_shots} of {res.shots} shots have clipped "
                f"pixels (at full scale; up to {100 * res.clipped_max:.1f} % of a shot): nothing "
                "is inspected there, and a live part seen only clipped somewhere is faulted; "
                "lower camera.exposure_us or diffuse the light",
                highlight=False,
                soft_wrap=True,
            )


MIN_SHEETS = 10  # fewer found sheets say nothing of the line's placing


def placement_report(recipe: Recipe, placements: list[Placement]) -> None:
    """How the line placed the captured sheets, against the placement tolerance: each side's
    Cpk with its 95 % lower bound, and whether `coverage.edge_margin_mm` holds."""
    from rich.markup import escape

    from station.cellcal.store import inspection_camera
    from station.cli.app import console
    from station.geometry.coverage import placement_tolerance_mm
    from station.geometry.placement import side_reach
    from station.monitoring.placement import (
        capability,
        fault_share,
        margin_needed,
        margin_verdict,
    )

    tol, margin = placement_tolerance_mm(recipe), recipe.coverage.edge_margin_mm
    min_cpk = recipe.monitoring.drift.placement.min_cpk
    found = [p for p in placements if p.found]
    lost = [p for p in placements if not p.found]

    def say(text: str) -> None:
        console.print(text, highlight=False, soft_wrap=True)

    say(f"placement: {len(found)} of {len(placements)} sheets found (tolerance {tol:g} mm past "
        f"the region, coverage.edge_margin_mm {margin:g} mm)")
    if lost:
        say(f"[bold yellow]warning:[/] {len(lost)} sheet(s) not found, e.g. "
            f"{escape(lost[0].problem or '')}; "
            "live, such a sheet is faulted as misplaced: check the table's contrast around the "
            "sheet, or set sheet.check_placement: false")
    source = inspection_camera(recipe).source
    if source.startswith("nominal"):
        say(f"  note: the camera model is {escape(source)}; its error (7.5-10 mm on a twin "
            "camera mounted 3 mm / 1 deg off, README) moves the found sheets as much: run station "
            "calibrate-camera and calibrate-hand-eye before judging the line's placing")
    if len(found) < MIN_SHEETS:
        say(f"  too few sheets found to judge the line's placing (at least {MIN_SHEETS})")
        return
    region = region_rect(recipe)
    each = [side_reach(p.corners_mm, region) for p in found]
    reaches = {side: [r[side] for r in each] for side in SIDES}
    caps = [capability(side, xs, tol) for side, xs in reaches.items()]
    say("  mm past each side of the region (negative: inside), mean +- sd, Cpk [95 % lower "
        "bound]: " + "; ".join(f"{c.side} {c.mean:+.2f} +- {c.sd:.2f}, {c.cpk:.2f} "
                               f"[{c.cpk_low:.2f}]" for c in caps))
    need = margin_needed(reaches, tol, margin, min_cpk)
    worst, low = min(caps, key=lambda c: c.cpk_low), min(caps, key=lambda c: c.cpk)
    verdict = margin_verdict(caps, min_cpk)
    if verdict == "holds":
        say(f"  the margin holds: every side's Cpk is at least {min_cpk:g} at 95 % confidence "
            f"(the placement watch alarms below {min_cpk:g} live)"
            + (f"; {need:g} mm would too, with less room for the line to drift"
               if need is not None and need < margin else ""))
        return
    if verdict == "likely":
        say(f"  the margin likely holds: every side's Cpk is at least {min_cpk:g} as measured "
            f"(the lowest {low.cpk:.2f}, {low.side}), but {len(found)} sheets cannot show it at "
            f"95 % confidence (the {worst.side} side's bound is {worst.cpk_low:.2f}); capture "
            f"more sheets to be sure; live, the placement watch checks it over "
            f"{recipe.monitoring.drift.placement.window_parts} sheets")
        return
    fix = (f"widen coverage.edge_margin_mm to {need:g} mm (Cpk {min_cpk:g} at 95 % confidence "
           f"with these {len(found)} sheets) and plan the poses again (station plan-poses)"
           if need is not None else "fix the line's placing first")
    say(f"[bold yellow]warning:[/] the {low.side} side's Cpk is below {min_cpk:g} ({low.cpk:.2f}): "
        f"about {100 * fault_share(low.cpk):.2g} % of sheets would fault as misplaced there; "
        f"{fix}, or check the line's stops against sheet.center_mm")
