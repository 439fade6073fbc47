"""`station export`: the recipe's trained models as ONNX or OpenVINO graphs for deployment.

Each detector's newest model is exported beside its artifact (graph + JSON sidecar with the
model's identity and the recipe digest; station.detectors.runtimes). A recipe detector with
`runtime: onnxruntime` (format onnx) or `runtime: openvino` (format openvino) then runs from
it; a stale or missing export is refused when models are loaded. A detector that cannot be
exported is named on one line, the others are still exported, and the command exits 2 (as
for every expected failure).
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe name or path."),
        fmt: str = typer.Option(..., "--format", "-f", help="onnx or openvino."),
        detector: str | None = typer.Option(
            None, "--detector", "-d", help="Export only this detector of the recipe."
        ),
        opset: int = typer.Option(17, "--opset", help="ONNX opset of the exported graph."),
        threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch."),
    ) -> None:
        """Export the recipe's newest trained models to ONNX or OpenVINO."""
        from station.calibration.recipes import load_recipe
        from station.cli.app import console, err_console
        from station.cli.train import selected_detectors, set_threads
        from station.detectors.runtimes.export import OPSETS, export_model
        from station.detectors.runtimes.graphs import ExportError
        from station.detectors.runtimes.sidecar import FORMATS, RUNTIME_FORMAT
        from station.errors import StationError

        if fmt not in FORMATS:
            raise StationError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        if opset not in OPSETS:  # before any model is loaded
            raise StationError(
                f"--opset must be {OPSETS[0]} to {OPSETS[-1]} (the ONNX opsets torch exports), "
                f"not {opset}",
                hint="leave it out for opset 17",
            )
        rcp = load_recipe(recipe)
        targets = selected_detectors(rcp, detector)
        set_threads(threads)
        failed = 0
        for det_cfg in targets:
            try:
                res = export_model(rcp, det_cfg.name, fmt, opset)
            except ExportError as exc:  # other errors (no or stale model...): one line, stop
                err_console.print(
                    f"[bold red]error:[/] detector {det_cfg.name} cannot be exported to {fmt}: "
                    f"{exc.message}",
                    highlight=False,
                    soft_wrap=True,
                )
                failed += 1
                continue
            names = ", ".join(p.name for p in res.files)
            console.print(
                f"{det_cfg.name}: {res.version} -> {names} (max difference to torch "
                f"{res.rel_diff:.1e} of the output's magnitude)",
                highlight=False,
            )
            runtime = next(r for r, f in RUNTIME_FORMAT.items() if f == fmt)
            if det_cfg.runtime != runtime:
                console.print(
                    f"  to run it: set runtime: {runtime} for {det_cfg.name} in recipe {rcp.name}"
                )
        if failed:
            raise typer.Exit(2)
