"""`station plan-poses`: the shot poses that cover a recipe's region
(station.geometry.pose_plan)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from station.geometry.coverage import TableCamera
    from station.recipe import Recipe


def coverage_camera(recipe: Recipe, strict: bool = True) -> tuple[TableCamera | None, str]:
    """The camera model coverage and planning use: the cell calibration's when
    calibration/cell-<recipe>.yaml exists (None and the nominal pinhole otherwise), and its
    description. A refused calibration file raises when `strict`, else falls back to nominal."""
    from station.cellcal.store import camera_model
    from station.errors import CellCalibrationError
    from station.geometry.coverage import NOMINAL

    try:
        model = camera_model(recipe)
    except CellCalibrationError as exc:
        if strict:
            raise
        return None, f"{NOMINAL}; the cell calibration is refused: {exc.message}"
    return (model, model.source) if model.calibrated else (None, NOMINAL)


def register(app: typer.Typer) -> None:
    @app.command("plan-poses")
    def plan_poses(
        recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name or path."),
        overlap: float | None = typer.Option(
            None,
            "--overlap",
            help="Least share of a footprint its neighbour also sees, 0 to below 1 "
            "(default: coverage.overlap).",
        ),
        out: Path | None = typer.Option(
            None, "--out", help="Coverage picture, PNG (default: data/<recipe>/plan-poses.png)."
        ),
    ) -> None:
        """Plan the raster of shot poses that covers the recipe's region.

        A serpentine raster at the resolution the region needs, written to robot.poses_file,
        with a picture of the coverage."""
        from station.calibration.recipes import load_recipe
        from station.cli.app import console
        from station.cli.plan_files import write_plan
        from station.errors import StationError
        from station.geometry.pose_plan import plan, poses_file
        from station.paths import resolve

        def say(text: str) -> None:
            console.print(text, highlight=False, soft_wrap=True)

        rec = load_recipe(recipe, planning=True)  # the poses file may not exist yet
        target = poses_file(rec)  # refuses inline poses before any work
        chosen = rec.coverage.overlap if overlap is None else overlap
        model, described = coverage_camera(rec)
        p = plan(rec, chosen, model)
        if p.report.problems:  # never a plan its own check refuses
            more = len(p.report.problems) - 1
            raise StationError(
                f"no poses written: the plan for {rec.name} would fail its own check: "
                f"{p.report.problems[0]}" + (f" (and {more} more)" if more else ""),
                hint="fix the recipe field it names, then run station plan-poses again",
            )
        picture = resolve(out) if out else rec.data_dir / "plan-poses.png"
        write_plan(rec, p, chosen, picture)  # both or neither
        rep = p.report
        say(f"wrote {len(p.poses)} poses to {target}")
        say(f"picture {picture}")
        say(f"camera model: {described}")
        say(f"height {p.height_mm:g} mm ({p.height_from})")
        say(
            f"shots per sheet {len(p.poses)} ({p.grid[0]} x {p.grid[1]}), each "
            f"{p.footprint_mm[0]:.1f} x {p.footprint_mm[1]:.1f} mm, overlap "
            f"{p.overlap[0]:.2f} along x, {p.overlap[1]:.2f} along y"
            + (f", reaching {rec.coverage.view_margin_mm:g} mm past the region (view margin)"
               if rec.coverage.view_margin_mm else "")
        )
        for line in rep.lines():
            say(line)
        m = p.motion
        say(
            f"motion per sheet ~{m.total_s:.1f} s ({m.moves_s:.1f} s moving {m.path_mm:.0f} mm "
            f"at {rec.robot.speed_mm_s:g} mm/s, {rec.robot.acceleration_mm_s2:g} mm/s², "
            f"+ {m.settle_s:.1f} s settling)"
        )
        if p.card_s:
            say(f"reference card (monitoring.drift.reference): +{p.card_s:.1f} s per part")
