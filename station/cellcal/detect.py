"""Finding the ChArUco board in a shot, and telling a wrong board definition from no board."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from station.errors import CellCalibrationError
from station.geometry.charuco import DICTIONARIES, BoardDef

MIN_CORNERS = 8
MAX_MARKER_ERROR_PX = 3.0  # markers further than this from the board's layout: wrong definition


@dataclass(frozen=True)
class Detection:
    ids: np.ndarray  # (N,) chessboard corner ids
    corners: np.ndarray  # (N, 2) pixels
    markers: int  # markers seen


def _grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


class BoardDetector:
    def __init__(self, board: BoardDef) -> None:
        self.board = board
        self.cv = board.cv_board()
        params = cv2.aruco.CharucoParameters()
        params.minMarkers = 2
        self.detector = cv2.aruco.CharucoDetector(self.cv, params)
        self.obj = {int(i): np.asarray(p, np.float64)[:, :2]
                    for i, p in zip(self.cv.getIds(), self.cv.getObjPoints(), strict=True)}

    def detect(self, image: np.ndarray, view: str) -> Detection | None:
        """The board's corners in `image`; None when too few are seen. CellCalibrationError
        when the markers seen do not fit the board definition."""
        grey = _grey(image)
        ch_corners, ch_ids, m_corners, m_ids = self.detector.detectBoard(grey)
        if m_ids is None or len(m_ids) == 0:
            return None
        ids = m_ids.ravel().astype(int)
        foreign = sorted(set(ids.tolist()) - set(self.obj))
        if foreign:
            raise CellCalibrationError(
                f"view {view}: markers {foreign[:5]} are not on the board "
                f"({self.board.describe()}, ids 0-{self.board.marker_count - 1})",
                hint="give the printed board's definition (--squares, --dictionary)")
        if len(ids) >= 4:
            obj = np.concatenate([self.obj[i] for i in ids])
            img = np.concatenate([c.reshape(4, 2) for c in m_corners]).astype(np.float64)
            hmat, _ = cv2.findHomography(obj, img, 0)
            if hmat is not None:
                proj = cv2.perspectiveTransform(obj.reshape(-1, 1, 2), hmat).reshape(-1, 2)
                err = float(np.median(np.linalg.norm(proj - img, axis=1)))
                if err > MAX_MARKER_ERROR_PX:
                    raise CellCalibrationError(
                        f"view {view}: the markers seen are {err:.1f} px off the layout of "
                        f"{self.board.describe()}",
                        hint="give the printed board's definition (--squares, --square-mm, "
                        "--marker-mm)")
        if ch_ids is None or len(ch_ids) < MIN_CORNERS:
            return None
        return Detection(ch_ids.ravel().astype(int), ch_corners.reshape(-1, 2).astype(np.float64),
                         len(ids))


def other_dictionary(image: np.ndarray, board: BoardDef) -> str | None:
    """The name of another ArUco dictionary whose markers the image holds (a wrong definition)."""
    grey = _grey(image)
    for name, code in DICTIONARIES.items():
        if name == board.dictionary:
            continue
        det = cv2.aruco.ArucoDetector(cv2.aruco.getPredefinedDictionary(code))
        _, ids, _ = det.detectMarkers(grey)
        if ids is not None and len(ids) >= 4:
            return name
    return None
