"""`station capture`: drive robot and camera through the recipe's poses and store the shots.

The capture itself (files in MVTec-AD layout, Part and Shot rows) is
`station.inspection.capture.run_capture`; this module parses the options and prints.
"""

from __future__ import annotations

import typer

from station.errors import StationError


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
        seed: int | None = typer.Option(None, "--seed", help="Twin seed (default: twin.seed)."),
    ) -> None:
        """Move through the recipe's poses for each part and store one shot per pose."""
        from station.calibration.recipes import load_recipe
        from station.cli.app import console, err_console
        from station.cli.progress import make_progress
        from station.inspection.capture import check_arguments, run_capture

        rec = load_recipe(recipe)
        check_arguments(rec, count, label, seed)
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
            f"({res.defect_shots} defect shots, {res.defect_parts} defect parts) in "
            f"{res.seconds:.1f} s -> {res.root}"
        )
        if res.clipped_shots:
            console.print(
                f"[bold yellow]warning:[/] {res.clipped_shots} of {res.shots} shots have clipped "
                f"pixels (at full scale; up to {100 * res.clipped_max:.1f} % of a shot): nothing "
                "is inspected there, and a live part seen only clipped somewhere is faulted; "
                "lower camera.exposure_us or diffuse the light",
                highlight=False,
                soft_wrap=True,
            )
