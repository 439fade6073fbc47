"""Solving the calibration: intrinsics and distortion (cv2.calibrateCamera on ChArUco corners,
outlier views dropped), then hand-eye (cv2.calibrateHandEye, three methods compared) and the
board's pose in the base frame."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from station.cellcal import geometry as geo
from station.cellcal.detect import Detection
from station.cellcal.views import MIN_VIEWS
from station.errors import CellCalibrationError
from station.geometry.charuco import BoardDef

OUTLIER_FACTOR = 3.0  # a view whose RMS exceeds this times the median RMS is dropped
OUTLIER_FLOOR_PX = 0.5  # ... and this much
METHODS = {"TSAI": cv2.CALIB_HAND_EYE_TSAI, "PARK": cv2.CALIB_HAND_EYE_PARK,
           "DANIILIDIS": cv2.CALIB_HAND_EYE_DANIILIDIS}
MIN_ROTATION_DEG = 2.0  # relative flange rotations below this count as pure translations


@dataclass
class IntrinsicsResult:
    matrix: np.ndarray  # 3x3
    dist: np.ndarray  # k1 k2 p1 p2 k3
    rms_px: float
    per_view_px: dict[str, float]
    used: list[str]
    dropped: dict[str, str] = field(default_factory=dict)  # view -> why


def _points(board: BoardDef, det: Detection) -> tuple[np.ndarray, np.ndarray]:
    obj = board.corners_mm()[det.ids].astype(np.float32).reshape(-1, 1, 3)
    return obj, det.corners.astype(np.float32).reshape(-1, 1, 2)


def view_rms(board: BoardDef, det: Detection, k: np.ndarray, dist: np.ndarray,
             rvec: np.ndarray, tvec: np.ndarray) -> float:
    obj, img = _points(board, det)
    proj, _ = cv2.projectPoints(obj, rvec, tvec, k, dist)
    return float(np.sqrt(np.mean(np.sum((proj - img) ** 2, axis=2))))


def solve_intrinsics(board: BoardDef, dets: dict[str, Detection],
                     size: tuple[int, int]) -> IntrinsicsResult:
    """calibrateCamera on the views' corners; views far above the others' error are dropped
    (at most a quarter of them) and the solve repeated."""
    names = list(dets)
    dropped: dict[str, str] = {}
    while True:
        if len(names) < MIN_VIEWS:
            raise CellCalibrationError(
                f"only {len(names)} views show the board well enough (need {MIN_VIEWS})",
                hint="check that the board lies under the camera and is lit, then raise --count")
        objs, imgs = zip(*(_points(board, dets[n]) for n in names), strict=True)
        rms, k, dist, rvecs, tvecs = cv2.calibrateCamera(
            list(objs), list(imgs), size, None, None, flags=cv2.CALIB_FIX_K3,
            criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12))
        per = {n: view_rms(board, dets[n], k, dist, r, t)
               for n, r, t in zip(names, rvecs, tvecs, strict=True)}
        limit = max(OUTLIER_FACTOR * float(np.median(list(per.values()))), OUTLIER_FLOOR_PX)
        worst = max(per, key=lambda n: per[n])
        if per[worst] <= limit or len(dropped) >= len(dets) // 4:
            return IntrinsicsResult(k, dist.ravel()[:5], float(rms), per, names, dropped)
        dropped[worst] = f"RMS {per[worst]:.2f} px > {limit:.2f} px"
        names.remove(worst)


def board_poses(board: BoardDef, dets: dict[str, Detection], k: np.ndarray,
                dist: np.ndarray) -> dict[str, np.ndarray]:
    """Board -> camera per view (solvePnP with the solved intrinsics)."""
    out = {}
    for name, det in dets.items():
        obj, img = _points(board, det)
        ok, rvec, tvec = cv2.solvePnP(obj, img, k, dist, flags=cv2.SOLVEPNP_ITERATIVE)
        if ok:
            out[name] = geo.from_rt(rvec, tvec)
    return out


def motion_problem(flanges: list[np.ndarray]) -> str | None:
    """Why these flange poses cannot determine hand-eye, or None."""
    axes = []
    for a in flanges:
        for b in flanges:
            rel = geo.inv(a) @ b
            if geo.angle_deg(rel) >= MIN_ROTATION_DEG:
                v = geo.rotvec(rel)
                axes.append(v / np.linalg.norm(v))
    if not axes:
        return "the views differ only by translations"
    s = np.linalg.svd(np.array(axes), compute_uv=False)
    if s[1] < 0.05 * s[0]:
        return "the views rotate about one axis only"
    return None


@dataclass
class HandEyeResult:
    method: str
    camera_to_flange: np.ndarray  # 4x4: camera frame -> flange frame
    board_to_base: np.ndarray  # 4x4
    residual_mm: float  # RMS over views of the board corners' spread in the base frame
    residual_deg: float  # RMS over views of the board orientation's spread
    methods: dict[str, tuple[float, float]]  # method -> (mm, deg)
    used: list[str]


def spread(board: BoardDef, flanges: list[np.ndarray], cams: list[np.ndarray], x: np.ndarray
           ) -> tuple[np.ndarray, float, float, list[float], list[float]]:
    """The board -> base each view implies with mounting `x`: their mean, the RMS over views of
    each one's corner distance (mm) and angle (deg) from the mean, and the per-view values."""
    boards = [f @ x @ c for f, c in zip(flanges, cams, strict=True)]
    mean = geo.mean_transform(boards)
    pts = np.c_[board.corners_mm(), np.ones(len(board.corners_mm()))].T
    ref = (mean @ pts)[:3]
    mm = [float(np.sqrt(np.mean(np.sum(((b @ pts)[:3] - ref) ** 2, axis=0)))) for b in boards]
    deg = [geo.angle_deg(mean[:3, :3].T @ b[:3, :3]) for b in boards]
    return (mean, float(np.sqrt(np.mean(np.square(mm)))),
            float(np.sqrt(np.mean(np.square(deg)))), mm, deg)


def solve_hand_eye(board: BoardDef, flanges: dict[str, np.ndarray],
                   cams: dict[str, np.ndarray]) -> HandEyeResult:
    """camera -> flange from flange -> base and board -> camera per view (Tsai, Park and
    Daniilidis; the one whose board poses agree best wins), and board -> base."""
    names = [n for n in cams if n in flanges]
    if len(names) < MIN_VIEWS:
        raise CellCalibrationError(
            f"only {len(names)} views have both a robot pose and a board pose (need {MIN_VIEWS})",
            hint="run station calibrate-camera again with more views")
    f = [flanges[n] for n in names]
    c = [cams[n] for n in names]
    why = motion_problem(f)
    if why:
        raise CellCalibrationError(
            f"hand-eye is undetermined: {why}",
            hint="use views tilted in different directions and rolled about the optical axis "
            "(the generated views are; check --views)")
    results: dict[str, tuple[np.ndarray, np.ndarray, float, float]] = {}
    for name, code in METHODS.items():
        r, t = cv2.calibrateHandEye([m[:3, :3] for m in f], [m[:3, 3] for m in f],
                                    [m[:3, :3] for m in c], [m[:3, 3] for m in c], method=code)
        x = np.eye(4)
        x[:3, :3], x[:3, 3] = r, np.ravel(t)
        if not np.all(np.isfinite(x)):
            continue
        mean, mm, deg, _, _ = spread(board, f, c, x)
        results[name] = (x, mean, mm, deg)
    if not results:
        raise CellCalibrationError("every hand-eye method failed on these views",
                                   hint="capture the views again")
    best = min(results, key=lambda n: (results[n][2], results[n][3]))
    x, mean, mm, deg = results[best]
    return HandEyeResult(best, x, mean, mm, deg,
                         {n: (v[2], v[3]) for n, v in results.items()}, names)


def table_plane(board_to_base: np.ndarray) -> tuple[float, float]:
    """The board's (table's) tilt from horizontal in degrees and its height (mm) at its origin."""
    normal = board_to_base[:3, 2]
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    return tilt, float(board_to_base[2, 3])


@dataclass
class Refined:
    matrix: np.ndarray
    dist: np.ndarray
    camera_to_flange: np.ndarray
    board_to_base: np.ndarray
    rms_px: float


def _pack(t: np.ndarray) -> np.ndarray:
    return np.r_[geo.rotvec(t), t[:3, 3]]


def _unpack(p: np.ndarray) -> np.ndarray:
    return geo.from_pose(p[3:6], p[:3])


def refine(board: BoardDef, dets: dict[str, Detection], flanges: dict[str, np.ndarray],
           k: np.ndarray, dist: np.ndarray, x: np.ndarray, b: np.ndarray) -> Refined:
    """Bundle adjustment over all views at once: intrinsics, distortion (k3 kept at 0), camera
    -> flange and ONE board -> base, against every corner's reprojection. The robot's poses are
    trusted (a UR reports its TCP to a few hundredths of a millimetre), which leaves far fewer
    unknowns than one free board pose per view."""
    from scipy.optimize import least_squares

    names = [n for n in dets if n in flanges]
    objs = [board.corners_mm()[dets[n].ids] for n in names]
    imgs = [dets[n].corners for n in names]
    fl_inv = [geo.inv(flanges[n]) for n in names]

    def residuals(p: np.ndarray) -> np.ndarray:
        kk = np.array([[p[0], 0, p[2]], [0, p[1], p[3]], [0, 0, 1.0]])
        dd = np.r_[p[4:8], 0.0]
        xi, bb = geo.inv(_unpack(p[8:14])), _unpack(p[14:20])
        out = []
        for obj, img, fi in zip(objs, imgs, fl_inv, strict=True):
            cb = xi @ fi @ bb  # board -> camera
            proj, _ = cv2.projectPoints(obj, geo.rotvec(cb), cb[:3, 3], kk, dd)
            out.append((proj.reshape(-1, 2) - img).ravel())
        return np.concatenate(out)

    p0 = np.r_[k[0, 0], k[1, 1], k[0, 2], k[1, 2], dist[:4], _pack(x), _pack(b)]
    sol = least_squares(residuals, p0, method="lm", x_scale="jac")
    p = sol.x
    r = sol.fun.reshape(-1, 2)
    return Refined(np.array([[p[0], 0, p[2]], [0, p[1], p[3]], [0, 0, 1.0]]),
                   np.r_[p[4:8], 0.0], _unpack(p[8:14]), _unpack(p[14:20]),
                   float(np.sqrt(np.mean(np.sum(r * r, axis=1)))))
