"""`station recipe ...`: validate and summarise recipes."""

from __future__ import annotations

import typer
from rich.table import Table

from station.calibration.recipes import load_recipe
from station.errors import RecipeError
from station.recipe import Recipe


def summary_table(recipe: Recipe) -> Table:
    t = Table(title=f"recipe {recipe.name}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("file", recipe.source)
    t.add_row("description", recipe.description or "-")
    t.add_row(
        "backend",
        f"{recipe.backend} (robot: {recipe.robot_driver}, camera: {recipe.camera_driver}, "
        f"line I/O: {recipe.line_driver})",
    )
    from station.geometry.pose_plan import card_extra_s, motion

    shown = recipe.robot.poses[:6]  # a planned raster has up to 400
    poses = ", ".join(
        f"{p.name} ({p.position_mm[0]:.0f}, {p.position_mm[1]:.0f}, {p.position_mm[2]:.0f}) mm"
        for p in shown
    )
    more = len(recipe.robot.poses) - len(shown)
    poses += f", ... ({more} more)" if more else ""
    source = f" from {recipe.robot.poses_file}" if recipe.robot.poses_file else ""
    per_sheet = motion(recipe.robot, recipe.robot.poses).total_s
    card = card_extra_s(recipe)
    t.add_row("poses", f"{len(recipe.robot.poses)}{source}: {poses}")
    t.add_row(
        "motion",
        f"{recipe.robot.speed_mm_s:g} mm/s, {recipe.robot.acceleration_mm_s2:g} mm/s², "
        f"settle {recipe.robot.settle_s:g} s; ~{per_sheet:.1f} s per sheet (home, every pose, "
        "home)" + (f", + {card:.1f} s for the reference card" if card else ""),
    )
    cam = recipe.camera
    t.add_row(
        "camera",
        f"{cam.width}x{cam.height} {cam.pixel_format}, exposure {cam.exposure_us:g} µs, "
        f"gain {cam.gain_db:g} dB, {cam.trigger} trigger, "
        f"serial {getattr(cam, 'serial', None) or 'first found'}",  # serial: pylon only
    )
    pre = recipe.preprocess
    size = (
        f"tiles of {pre.size[0]}x{pre.size[1]} (overlap {pre.tiling.overlap_px} px)"
        if pre.tiling.enabled
        else f"resize to {pre.size[0]}x{pre.size[1]}"
    )
    t.add_row(
        "preprocess",
        f"crop {pre.crop or 'none'}, {size}" + (", grey to RGB" if pre.grey_to_rgb else ""),
    )
    for d in recipe.detectors:
        params = ", ".join(f"{k}={v}" for k, v in d.params.items()) or "defaults"
        t.add_row(
            f"detector {d.name}",
            f"backbone {d.backbone} (weights: {d.weights}), device {d.device}, {params}",
        )
    dec = recipe.decision
    t.add_row(
        "decision",
        f"poses combined by {dec.combine_poses}, detectors by {dec.combine_detectors}; "
        f"thresholds from {recipe.calibration_path} (policy {dec.policy})",
    )
    t.add_row("placement", placement_summary(recipe))
    t.add_row("line I/O", line_io_summary(recipe))
    from station.storage.db import hide_password

    t.add_row("database", hide_password(recipe.storage.resolved_database_url()))
    t.add_row("data", str(recipe.data_dir))
    from station.cellcal.store import summary as cell_summary

    t.add_row("cell calibration", cell_summary(recipe))
    return t


def line_io_summary(recipe: Recipe) -> str:
    """The line contract's signals as wired (README "Line contract"); an off one says so."""
    io = recipe.line_io

    def out(name: str, value: int | None, what: str = "DO") -> str:
        return f"{name} {what}{value}" if value is not None else f"{name} off"

    parts = [
        out("reject output", io.reject_output),
        out("part present", io.part_present_input, "DI"),
        out(f"heartbeat (every {io.heartbeat_period_s:g} s)", io.heartbeat_output),
        out("RESULT_VALID", io.result_valid_output),
        out("part id", io.part_id_register, "input_int_register_"),
        out("release", io.release_output),
    ]
    return ", ".join(parts) + (
        f"; the PLC waits {io.result_timeout_s:g} s for a result and "
        f"{io.heartbeat_timeout_s:g} s for a heartbeat toggle"
    )


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Validate and summarise recipes.", no_args_is_help=True)
    app.add_typer(group, name="recipe")

    @group.command("check")
    def check(
        recipe: str = typer.Argument(..., help="Recipe name (recipes/<name>.yaml) or path."),
    ) -> None:
        """Validate a recipe, print its coverage and summary.

        Exit code 2 with one line per problem: schema, detectors, twin, and what the poses
        leave unseen or too coarse. The coverage block is printed when valid or refused for
        coverage only; other problems end the output alone."""
        from station.cli.app import console
        from station.cli.plan import coverage_camera
        from station.geometry.coverage import check as coverage_check

        loaded = load_recipe(recipe)
        model, described = coverage_camera(loaded, strict=False)  # the summary says why
        cover = coverage_check(loaded, model)
        deep = deep_problems(loaded)
        if not deep:  # the numbers behind a coverage refusal; noise before other problems
            for line in cover.lines():
                console.print(line, highlight=False, soft_wrap=True)
            console.print(
                f"camera model: {described}", highlight=False, soft_wrap=True, markup=False
            )
        if deep or cover.problems:
            raise RecipeError(str(loaded.source or loaded.name), deep + cover.problems)
        for line in device_warnings(loaded):
            console.print(f"[yellow]warning[/]: {line}", highlight=False, soft_wrap=True)
        console.print(summary_table(loaded))
        console.print(f"[green]ok[/]: {loaded.source} is valid")


def placement_summary(recipe: Recipe) -> str:
    """Whether each part's sheet is found in its shots, and what faults it."""
    from station.geometry.coverage import checks_placement, placement_tolerance_mm

    if checks_placement(recipe):
        half = placement_tolerance_mm(recipe)
        return (
            "each sheet's edges found in its shots; a sheet reaching more than "
            f"{half:g} mm past the region (its place grown by coverage.edge_margin_mm "
            f"{recipe.coverage.edge_margin_mm:g} mm) is faulted as misplaced"
            + _watch_summary(recipe)
        )
    why = "partial region" if recipe.coverage.partial else "sheet.check_placement: false"
    return f"not checked ({why}): a sheet off its place is inspected where it lies"


def _watch_summary(recipe: Recipe) -> str:
    w = recipe.monitoring.drift.placement
    if not (w.enabled and recipe.monitoring.drift.enabled):
        return "; the placement watch is off (monitoring.drift.placement)"
    return (f"; an alarm when a side's last {w.window_parts} sheets come within Cpk "
            f"{w.min_cpk:g} of that (monitoring.drift.placement)")


def device_warnings(recipe: Recipe) -> list[str]:
    """Valid, but worth a word: a GPU the recipe asks for and this machine lacks (nothing runs
    here), a UR robot without its payload."""
    from station.detectors.backbones import resolve_device
    from station.errors import DetectorError
    from station.hardware.ur.robot import NO_PAYLOAD
    from station.recipe import URRobotConfig

    out = []
    if isinstance(recipe.robot, URRobotConfig) and recipe.robot.payload_kg is None:
        out.append(f"{NO_PAYLOAD}; set the camera, lens and bracket mass so that its collision "
                   "detection holds")
    for i, det in enumerate(recipe.detectors):
        if not det.device.strip().lower().startswith("cuda"):
            continue  # auto and cpu run anywhere (auto says so when it takes the CPU)
        try:
            resolve_device(det.device)
        except DetectorError as exc:
            out.append(f"detectors[{i}].device: {exc.message}: train, evaluate and inspect "
                       "refuse here (--device cpu evaluates on the CPU)")
    return out


def deep_problems(recipe: Recipe) -> list[str]:
    """What the schema alone cannot see: detector params against each detector's parameters,
    the backbone and its weights on this machine, and the twin's settings (sim recipes)."""
    from station.detectors.backbones import BACKBONES, create_backbone
    from station.detectors.registry import config_problems, detector_kwargs
    from station.devices.factory import uses_twin
    from station.errors import StationError

    problems = []
    opened: dict[tuple[str, str], str | None] = {}  # (backbone, weights) -> the problem
    for i, det in enumerate(recipe.detectors):
        where = f"detectors[{i}]"
        found = config_problems(det.name, detector_kwargs(det))
        problems += [f"{where}.params: {p}" for p in found]
        if det.backbone not in BACKBONES:
            problems.append(
                f"{where}.backbone: unknown backbone {det.backbone!r}; known: "
                + ", ".join(sorted(BACKBONES))
            )
            continue
        key = (det.backbone, det.weights)
        if key not in opened:  # found, read and fitted to the network, as train does
            try:
                create_backbone(*key)
                opened[key] = None
            except StationError as exc:
                opened[key] = str(exc)
        if opened[key] is not None:
            problems.append(f"{where}.weights: {opened[key]}")
    if uses_twin(recipe):
        from station.twin.world import TwinWorld, unknown_params

        problems += unknown_params(recipe.twin.params)  # beside the twin's first refusal
        try:
            TwinWorld(recipe)
        except RecipeError as exc:
            problems += [p for p in exc.problems if p not in problems]
    return problems
