"""`station calibrate-camera` and `station calibrate-hand-eye`: the cell's camera calibration."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from station.errors import CellCalibrationError

if TYPE_CHECKING:  # for annotations only: the commands import cellcal when they run
    from station.cellcal.run import CameraRun
    from station.geometry.charuco import BoardDef


def _board(squares: str, square_mm: float, marker_mm: float | None, dictionary: str) -> BoardDef:
    from station.geometry.charuco import BoardDef

    try:
        sx, sy = (int(v) for v in squares.lower().split("x"))
    except ValueError:
        raise CellCalibrationError(f"--squares {squares!r} is not NXxNY",
                                   hint="give e.g. --squares 12x9") from None
    board = BoardDef(sx, sy, square_mm, marker_mm if marker_mm else 0.75 * square_mm,
                     dictionary.upper())
    if board.problems():
        raise CellCalibrationError("board definition: " + "; ".join(board.problems()),
                                   hint="fix --squares, --square-mm, --marker-mm, --dictionary")
    return board


def calibrate_camera(
    recipe: str = typer.Option(None, "--recipe", "-r", help="Recipe name or path."),
    print_board: Path | None = typer.Option(
        None, "--print-board", help="Write the board as a true-scale PDF and stop."),
    squares: str = typer.Option("12x9", "--squares", help="Board squares, X x Y."),
    square_mm: float | None = typer.Option(
        None, "--square-mm",
        help="Square side as measured (default: the recipe's board, sized to its view)."),
    marker_mm: float | None = typer.Option(
        None, "--marker-mm", help="Marker side (default 0.75 x square)."),
    dictionary: str = typer.Option("DICT_4X4_100", "--dictionary", help="ArUco dictionary."),
    count: int = typer.Option(20, "--count", "-n", help="Views to generate."),
    views_file: Path | None = typer.Option(
        None, "--views", help="YAML list of poses to use instead of generated views."),
    board_at: str | None = typer.Option(
        None, "--board-at", help="Board centre X,Y in mm (default: under the poses)."),
    prepare_emulator: bool = typer.Option(
        False, "--prepare-emulator",
        help="Render the twin's board views into camera.emulator_images and stop."),
) -> None:
    """Solve the camera's intrinsics and distortion from views of a ChArUco board.

    The robot moves the camera over the board through generated views (tilts, rolls and
    distances spread), detects the board, solves, drops outlier views and writes
    calibration/cell-<recipe>.yaml (a history copy under calibration/history/).
    """
    from station.calibration.recipes import load_recipe
    from station.cellcal import run, views
    from station.cellcal.printout import write_board_pdf
    from station.cli.app import console
    from station.geometry.charuco import recipe_board

    rcp = load_recipe(recipe) if recipe else None
    if square_mm is None:  # the board the recipe's camera sees best at its focus distance
        if rcp is None:
            raise CellCalibrationError(
                "give --recipe (the board is sized to its camera's view) or --square-mm",
                hint="e.g. station calibrate-camera --print-board board.pdf --recipe glassfiber")
        square_mm = recipe_board(rcp).square_mm
    board = _board(squares, square_mm, marker_mm, dictionary)
    if print_board is not None:
        write_board_pdf(board, print_board)
        w, h = board.size_mm
        console.print(f"[green]wrote[/] {print_board}: {board.describe()}, {w:g} x {h:g} mm "
                      "at true scale (print at 100 %)", highlight=False)
        return
    if rcp is None:
        raise CellCalibrationError("give --recipe (or --print-board FILE)",
                                   hint="e.g. station calibrate-camera --recipe glassfiber")
    poses = (views.read_views(views_file, rcp) if views_file else
             views.plan_views(rcp, board, count, run.default_centre(rcp, board_at)))
    if prepare_emulator:
        folder = run.prepare_emulator(rcp, poses)
        console.print(f"[green]wrote[/] {len(poses)} twin board views for the pylon emulator "
                      f"-> {folder}; now run the same command without --prepare-emulator",
                      highlight=False)
        return
    with console.status("capturing views") as status:
        done = run.calibrate_camera(
            rcp, board, poses, lambda n: status.update(f"captured {n} of {len(poses)}"))
    _print_camera_result(done, board, rcp.name)


def calibrate_hand_eye(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name or path."),
) -> None:
    """Solve the camera's mounting on the flange and the board's pose on the table.

    Uses the views calibrate-camera captured: robot flange poses plus board poses (solvePnP
    with the solved intrinsics); Tsai, Park and Daniilidis are compared and the one whose
    board poses agree best is kept.
    """
    from station.calibration.recipes import load_recipe
    from station.cellcal import run
    from station.cli.app import console

    rcp = load_recipe(recipe)
    done = run.calibrate_hand_eye(rcp)
    res, he = done.result, done.data["hand_eye"]
    t = Table(title="hand-eye methods (spread of the board pose over the views)",
              title_justify="left")
    for col in ("method", "residual mm", "residual deg", ""):
        t.add_column(col, justify="left" if col in ("method", "") else "right")
    for name, (mm, deg) in res.methods.items():
        t.add_row(name, f"{mm:.4f}", f"{deg:.4f}", "[green]kept[/]" if name == res.method
                  else "")
    console.print(t)
    m, ini = he["camera_to_flange"], he["initial"]
    console.print(
        f"kept {res.method} (camera at "
        f"({', '.join(f'{v:.3f}' for v in ini['camera_to_flange']['position_mm'])}) mm in "
        "the flange frame)", highlight=False)
    if he["refined"]:
        k = he["matrix"]
        console.print(
            f"refined jointly with the intrinsics over all views: reprojection RMS "
            f"{he['rms_px']:.3f} px, fx {k[0][0]:.2f} fy {k[1][1]:.2f} cx {k[0][2]:.2f} "
            f"cy {k[1][2]:.2f} px", highlight=False)
    else:
        console.print("[yellow]joint refinement did not converge: the method's result is "
                      "kept[/]")
    console.print(
        f"camera in the flange frame at ({', '.join(f'{v:.3f}' for v in m['position_mm'])}) "
        f"mm, rotvec ({', '.join(f'{v:.5f}' for v in m['rotvec_rad'])}) rad: "
        f"{he['change_from_nominal']['mm']:.3f} mm and "
        f"{he['change_from_nominal']['deg']:.3f} deg from the recipe's tcp_offset",
        highlight=False)
    b = he["board_to_base"]["position_mm"]
    console.print(
        f"board origin at ({b[0]:.2f}, {b[1]:.2f}, {b[2]:.3f}) mm in the base frame; table "
        f"tilted {he['table_tilt_deg']:.3f} deg; residuals {res.residual_mm:.3f} mm, "
        f"{res.residual_deg:.4f} deg over {len(res.used)} views; [green]wrote[/] "
        f"{run.store.display(done.path)}", highlight=False)
    worst = max(he["per_view"], key=lambda n: he["per_view"][n]["mm"])
    console.print(f"worst view {worst}: {he['per_view'][worst]['mm']:.3f} mm, "
                  f"{he['per_view'][worst]['deg']:.4f} deg from the mean board pose",
                  highlight=False)
    for warning in he["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


def camera_views_table(done: CameraRun) -> Table:
    """One row per view: its corners and reprojection error, and a `note` column, only when a
    view was dropped (and why) or showed no board: an empty column had no heading."""
    res, dets = done.result, dict(done.result.per_view_px)
    rows = []
    for name in done.capture.names:
        n = str(done.corners.get(name, ""))
        if name in res.dropped:
            rows.append((name, n, "", f"[yellow]dropped: {escape(res.dropped[name])}[/]"))
        elif name in dets:
            rows.append((name, n, f"{dets[name]:.3f}", ""))
        else:
            rows.append((name, "", "", "[yellow]board not found[/]"))
    noted = any(row[3] for row in rows)
    t = Table()
    for col in ("view", "corners", "RMS px", "note")[: 4 if noted else 3]:
        t.add_column(col, justify="right" if col in ("corners", "RMS px") else "left")
    for row in rows:
        t.add_row(*row[: 4 if noted else 3])
    return t


def _print_camera_result(done: CameraRun, board: BoardDef, recipe_name: str) -> None:
    """Per-view corners and errors, the solved intrinsics, dropped views, where it was written."""
    from station.cellcal import run
    from station.cli.app import console

    res = done.result
    console.print(f"camera calibration, {board.describe()}", highlight=False)
    console.print(camera_views_table(done))
    k, d = res.matrix, res.dist
    console.print(
        f"fx {k[0, 0]:.2f} fy {k[1, 1]:.2f} cx {k[0, 2]:.2f} cy {k[1, 2]:.2f} px "
        f"({done.data['camera']['focal_vs_nominal_pct']:+.3f} % focal vs nominal); "
        f"k1 {d[0]:.5f} k2 {d[1]:.5f} p1 {d[2]:.6f} p2 {d[3]:.6f} k3 {d[4]:.5f}",
        highlight=False)
    console.print(
        f"RMS reprojection {res.rms_px:.3f} px over {len(res.used)} views; [green]wrote[/] "
        f"{run.store.display(done.path)} (history {run.store.display(done.history)}); "
        f"next: station calibrate-hand-eye --recipe {recipe_name}", highlight=False)
    if done.dropped_hand_eye:
        console.print("[yellow]the earlier hand-eye calibration was removed (it rests on the "
                      "old intrinsics)[/]: run calibrate-hand-eye again")


def register(app: typer.Typer) -> None:
    app.command("calibrate-camera")(calibrate_camera)
    app.command("calibrate-hand-eye")(calibrate_hand_eye)
