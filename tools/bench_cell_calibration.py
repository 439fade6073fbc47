"""Cell calibration against the twin's truth, over several seeds.

For each seed the twin gets a camera that is not the nominal one (`perturbed_truth`: focal
length and principal point off, lens distortion, mounting 3 mm and 1 degree away from the
recipe's `tcp_offset_mm`), then `calibrate-camera` and `calibrate-hand-eye` run on it in a
scratch station home. Printed per seed: the recovered camera-to-flange's error (mm, deg), the
focal length's error (%), the reprojection RMS (px), the hand-eye method kept. Then the sheet
map check: defective twin sheets are shot from the recipe's poses, each defect mask's centroid
pixel is projected to the table with the calibrated model and with the nominal one, and compared
with where the TRUE camera's ray through that pixel meets the table.

    python tools/bench_cell_calibration.py [--seeds 0 1 2 3 4] [--recipe glassfiber] [--views 20]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import cv2
import numpy as np


def focal_err(k: np.ndarray, truth: dict) -> float:
    """The larger relative error of fx and fy, in %."""
    return max(abs(k[0][0] / truth["fx"] - 1), abs(k[1][1] / truth["fy"] - 1)) * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--recipe", default="glassfiber")
    ap.add_argument("--views", type=int, default=20)
    ap.add_argument("--sheets", type=int, default=8, help="defective sheets per seed")
    args = ap.parse_args()

    from station.recipe import load_recipe

    base = load_recipe(args.recipe)  # before STATION_HOME moves
    home = tempfile.mkdtemp(prefix="cellcal-bench-")
    os.environ["STATION_HOME"] = home

    from station.cellcal import geometry as geo
    from station.cellcal import run, store, views
    from station.charuco import BoardDef
    from station.twin import optics
    from station.twin.truth import perturbed_truth
    from station.twin.world import TwinWorld, pose_tcp

    rows = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        params = perturbed_truth(base, seed)
        twin = base.twin.model_copy(update={"seed": seed, "time_scale": 0.0, "params": params})
        recipe = base.model_copy(update={"twin": twin, "name": f"bench{seed}"})
        board = BoardDef()
        cam_run = run.calibrate_camera(recipe, board, views.plan_views(recipe, board, args.views))
        he_run = run.calibrate_hand_eye(recipe)
        truth = params["camera_truth"]
        x_true = geo.from_pose(truth["mount_offset_mm"], truth["mount_rotvec_rad"])
        err = geo.inv(x_true) @ he_run.result.camera_to_flange
        he = he_run.data["hand_eye"]
        x0 = geo.inv(x_true) @ geo.from_dict(he["initial"]["camera_to_flange"])

        focal = focal_err(cam_run.result.matrix, truth)
        focal_final = focal_err(np.array(he.get("matrix", cam_run.result.matrix)), truth)

        # sheet map: defect-mask centroids to the table, calibrated and nominal vs the truth
        world = TwinWorld(recipe)
        model, nominal = store.camera_model(recipe), store.nominal_model(recipe)
        assert model.calibrated
        errs_cal, errs_nom = [], []
        for i in range(args.sheets):
            world.present(world.make_sheet(1000 + i, defective=True))
            for pose in recipe.robot.poses:
                tcp = pose_tcp(pose)
                shot = world.render(tcp, noise_seed=[seed, i])
                n, _, _, cents = cv2.connectedComponentsWithStats(shot.mask)
                if n <= 1:
                    continue
                uv = cents[1:]
                ideal = world.truth.ideal_pixels(uv)
                true_xy = optics.pixels_to_plane(world.truth.intrinsics, world.truth.pose(tcp),
                                                 ideal)
                errs_cal += list(np.linalg.norm(
                    model.pixels_to_table(tcp, uv)[:, :2] - true_xy, axis=1))
                errs_nom += list(np.linalg.norm(
                    nominal.pixels_to_table(tcp, uv)[:, :2] - true_xy, axis=1))
        rows.append((seed, float(np.linalg.norm(err[:3, 3])), geo.angle_deg(err), focal,
                     cam_run.result.rms_px, he_run.result.method, len(cam_run.result.used),
                     np.mean(errs_cal), np.max(errs_cal), np.mean(errs_nom), np.max(errs_nom),
                     len(errs_cal), time.perf_counter() - t0, float(np.linalg.norm(x0[:3, 3])),
                     geo.angle_deg(x0), focal_final, he.get("rms_px", float("nan"))))

    print(f"recipe {base.name}, {args.views} views, board {BoardDef().describe()}; truth: mount "
          "3 mm and 1 deg off nominal, distortion on (scratch home " + home + ")")
    print("| seed | offset error mm | offset error deg | method alone mm / deg | hand-eye method "
          "| focal error % (camera / final) | RMS px (camera / joint) | views used "
          "| defect centre error mm, calibrated (mean / max) | nominal (mean / max) "
          "| defects | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.3f} | {r[2]:.4f} | {r[13]:.3f} / {r[14]:.4f} | {r[5]} "
              f"| {r[3]:.3f} / {r[15]:.3f} | {r[4]:.3f} / {r[16]:.3f} | {r[6]} "
              f"| {r[7]:.3f} / {r[8]:.3f} | {r[9]:.2f} / {r[10]:.2f} | {r[11]} | {r[12]:.1f} |")
    a = np.array([[r[1], r[2], r[3], r[15], r[4], r[16]] for r in rows], float)
    print(f"max over seeds: offset {a[:, 0].max():.3f} mm, {a[:, 1].max():.4f} deg; focal "
          f"{a[:, 2].max():.3f} % (camera) / {a[:, 3].max():.3f} % (final); RMS "
          f"{a[:, 4].max():.3f} / {a[:, 5].max():.3f} px")
    ok = (a[:, 0].max() < 0.5 and a[:, 1].max() < 0.1 and a[:, 2:4].max() < 0.5
          and a[:, 4:6].max() < 0.3)
    print("acceptance (0.5 mm, 0.1 deg, 0.5 %, 0.3 px):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
