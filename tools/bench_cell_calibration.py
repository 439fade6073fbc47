"""Cell calibration against the twin's truth, over several seeds.

For each seed the twin gets a camera that is not the nominal one (`perturbed_truth`: focal
length and principal point off, lens distortion, mounting 3 mm and 1 degree away from the
recipe's `tcp_offset_mm`), then `calibrate-camera` and `calibrate-hand-eye` run on it in a
scratch station home. Printed per seed: the recovered camera-to-flange's error (mm, deg), the
focal length's error (%), the reprojection RMS (px), the hand-eye method kept. Then the sheet
map check (the acceptance line "defect centres, calibration against nominal offset"): defective
twin sheets are shot from the recipe's poses and a sheet map is built from each shot's defect
mask (2 x threshold inside, as tests/test_sheet_map.py does) three times: through the twin's
exact camera (the floor: grid and drawing), the cell calibration, and the nominal model
(recipe lens, no distortion, tcp_offset_mm). Each defect's error is the distance from its truth
(`TwinWorld.sheet_truth()[i]["centroid_mm"]`) to the nearest defect region of the map; defects
the shots see only in part (gaps at the sheet's edge, judged on the exact map) are left out.

    python tools/bench_cell_calibration.py [--seeds 0 1 2 3 4] [--recipe glassfiber] [--views 20]
        [--sheets 8] [--map-mm-per-px 0.25]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def focal_err(k: np.ndarray, truth: dict) -> float:
    """The larger relative error of fx and fy, in %."""
    return max(abs(k[0][0] / truth["fx"] - 1), abs(k[1][1] / truth["fy"] - 1)) * 100


def sheet_map_errors(recipe, seed: int, sheets: int) -> tuple[dict[str, list[float]], int]:  # noqa: ANN001
    """Per camera model (exact, calibrated, nominal), each wholly seen defect's distance (mm)
    from its truth centroid to the nearest defect region of the sheet map built from the
    shots' ground-truth masks; and how many defects were left out as partly seen."""
    from station.cellcal import store
    from station.inspection.sheet_accuracy import defect_centre_errors

    cameras = {
        "exact": store.inspection_camera(recipe),
        "calibrated": store.camera_model(recipe),
        "nominal": store.nominal_model(recipe),
    }
    assert cameras["calibrated"].calibrated and not cameras["nominal"].calibrated
    return defect_centre_errors(recipe, cameras, world_seed=seed, sheets=sheets,
                                noise_prefix=(seed,))


def calibrate(base, seed: int, n_views: int) -> tuple:  # noqa: ANN001
    """Calibrate the twin with seed `seed`'s perturbed camera; the recipe and a result row."""
    from station.cellcal import geometry as geo
    from station.cellcal import run, views
    from station.geometry.charuco import recipe_board
    from station.twin.truth import perturbed_truth

    params = perturbed_truth(base, seed)
    twin = base.twin.model_copy(update={"seed": seed, "time_scale": 0.0, "params": params})
    recipe = base.model_copy(update={"twin": twin, "name": f"bench{seed}"})
    board = recipe_board(recipe)
    cam_run = run.calibrate_camera(recipe, board, views.plan_views(recipe, board, n_views))
    he_run = run.calibrate_hand_eye(recipe)
    truth = params["camera_truth"]
    x_true = geo.from_pose(truth["mount_offset_mm"], truth["mount_rotvec_rad"])
    err = geo.inv(x_true) @ he_run.result.camera_to_flange
    he = he_run.data["hand_eye"]
    x0 = geo.inv(x_true) @ geo.from_dict(he["initial"]["camera_to_flange"])
    row = {
        "seed": seed,
        "mm": float(np.linalg.norm(err[:3, 3])),
        "deg": geo.angle_deg(err),
        "alone": (float(np.linalg.norm(x0[:3, 3])), geo.angle_deg(x0)),
        "method": he_run.result.method,
        "focal": (
            focal_err(cam_run.result.matrix, truth),
            focal_err(np.array(he.get("matrix", cam_run.result.matrix)), truth),
        ),
        "rms": (cam_run.result.rms_px, he.get("rms_px", float("nan"))),
        "views": len(cam_run.result.used),
    }
    return recipe, row


def print_tables(base, home: str, args, rows: list[dict]) -> None:  # noqa: ANN001
    from station.geometry.charuco import recipe_board

    print(
        f"recipe {base.name}, {args.views} views, board {recipe_board(base).describe()}; "
        "truth: mount 3 mm and 1 deg off nominal, distortion on (scratch home " + home + ")"
    )
    print(
        "| seed | offset error mm | offset error deg | method alone mm / deg | hand-eye method "
        "| focal error % (camera / final) | RMS px (camera / joint) | views used | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['mm']:.3f} | {r['deg']:.4f} | {r['alone'][0]:.3f} / "
            f"{r['alone'][1]:.4f} | {r['method']} | {r['focal'][0]:.3f} / {r['focal'][1]:.3f} "
            f"| {r['rms'][0]:.3f} / {r['rms'][1]:.3f} | {r['views']} | {r['s']:.1f} |"
        )
    a = np.array([[r["mm"], r["deg"], *r["focal"], *r["rms"]] for r in rows], float)
    print(
        f"max over seeds: offset {a[:, 0].max():.3f} mm, {a[:, 1].max():.4f} deg; focal "
        f"{a[:, 2].max():.3f} % (camera) / {a[:, 3].max():.3f} % (final); RMS "
        f"{a[:, 4].max():.3f} / {a[:, 5].max():.3f} px"
    )
    ok = (
        a[:, 0].max() < 0.5
        and a[:, 1].max() < 0.1
        and a[:, 2:4].max() < 0.5
        and a[:, 4:6].max() < 0.3
    )
    print("acceptance (0.5 mm, 0.1 deg, 0.5 %, 0.3 px):", "met" if ok else "NOT met")
    print()
    print(
        f"sheet map defect centres vs twin truth (centroid_mm), mm; {args.sheets} defective "
        f"sheets per seed, {len(base.robot.poses)} poses, map "
        f"{rows[0]['map_mm_px']:g} mm/px, fusion {base.decision.sheet_fusion}"
    )
    print(
        "| seed | defects (partly seen, left out) | calibrated mean / max | nominal mean / max "
        "| exact camera mean / max |"
    )
    print("|---|---|---|---|---|")
    every: dict[str, list[float]] = {"calibrated": [], "nominal": [], "exact": []}
    for r in rows:
        e = r["errors"]
        for name in every:
            every[name] += e[name]
        cells = " | ".join(
            f"{np.mean(e[n]):.3f} / {np.max(e[n]):.3f}" for n in ("calibrated", "nominal", "exact")
        )
        print(f"| {r['seed']} | {len(e['exact'])} ({r['partial']}) | {cells} |")
    cells = " | ".join(
        f"{np.mean(every[n]):.3f} / {np.max(every[n]):.3f}"
        for n in ("calibrated", "nominal", "exact")
    )
    print(f"| all | {len(every['exact'])} ({sum(r['partial'] for r in rows)}) | {cells} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--recipe", default="glassfiber")
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--sheets", type=int, default=8, help="defective sheets per seed")
    ap.add_argument(
        "--map-mm-per-px",
        type=float,
        default=None,
        help="sheet map cell (default: the recipe's decision.sheet_map_mm_per_px)",
    )
    args = ap.parse_args()

    from station.recipe import load_recipe

    base = load_recipe(args.recipe)  # before STATION_HOME moves
    if args.map_mm_per_px is not None:
        base = base.model_copy(
            update={
                "decision": base.decision.model_copy(
                    update={"sheet_map_mm_per_px": args.map_mm_per_px}
                )
            }
        )
    home = tempfile.mkdtemp(prefix="cellcal-bench-")
    os.environ["STATION_HOME"] = home

    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        recipe, row = calibrate(base, seed, args.views)
        row["errors"], row["partial"] = sheet_map_errors(recipe, seed, args.sheets)
        row["map_mm_px"] = recipe.decision.sheet_map_mm_per_px
        row["s"] = time.perf_counter() - t0
        rows.append(row)
    print_tables(base, home, args, rows)


if __name__ == "__main__":
    main()
