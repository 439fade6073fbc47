"""ChArUco calibration boards: the definition shared by the twin (which renders one) and the
cell calibration (which detects one).

Board frame (OpenCV's): origin at the outer corner of square (0, 0), x along the squares of a
row, y along the rows, z into the board. Chessboard corner k of an (nx, ny) board sits at
((k % (nx - 1) + 1) * square, (k // (nx - 1) + 1) * square, 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from station.recipe import Recipe

BOARD_FILL = 0.9  # a recipe's default board spans about this share of the view

DICTIONARIES = {
    name: getattr(cv2.aruco, name)
    for name in dir(cv2.aruco)
    if name.startswith("DICT_") and not name.startswith("DICT_APRILTAG")
}


@dataclass(frozen=True)
class BoardDef:
    squares_x: int = 12
    squares_y: int = 9
    square_mm: float = 5.0
    marker_mm: float = 3.75
    dictionary: str = "DICT_4X4_100"

    def problems(self) -> list[str]:
        out = []
        if self.squares_x < 3 or self.squares_y < 3:
            out.append("a board needs at least 3 x 3 squares")
        if not 0 < self.marker_mm < self.square_mm:
            out.append("marker_mm must be above 0 and below square_mm")
        if self.dictionary not in DICTIONARIES:
            out.append(f"unknown dictionary {self.dictionary!r}, e.g. DICT_4X4_100")
        elif self.marker_count > cv2.aruco.getPredefinedDictionary(
                DICTIONARIES[self.dictionary]).bytesList.shape[0]:
            out.append(f"{self.dictionary} has fewer markers than the board's {self.marker_count}")
        return out

    @property
    def marker_count(self) -> int:
        return self.squares_x * self.squares_y // 2

    @property
    def size_mm(self) -> tuple[float, float]:
        return self.squares_x * self.square_mm, self.squares_y * self.square_mm

    def cv_board(self) -> cv2.aruco.CharucoBoard:
        d = cv2.aruco.getPredefinedDictionary(DICTIONARIES[self.dictionary])
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), float(self.square_mm),
                                      float(self.marker_mm), d)

    def corners_mm(self) -> np.ndarray:
        """(N, 3) chessboard corners in the board frame, by corner id."""
        return np.asarray(self.cv_board().getChessboardCorners(), np.float64)

    def image(self, px_per_square: int) -> np.ndarray:
        """The board as a uint8 image, exactly `px_per_square` pixels per square, no margin."""
        w, h = self.squares_x * px_per_square, self.squares_y * px_per_square
        return self.cv_board().generateImage((w, h), marginSize=0, borderBits=1)

    def describe(self) -> str:
        return (f"ChArUco {self.squares_x} x {self.squares_y} squares of {self.square_mm:g} mm, "
                f"markers {self.marker_mm:g} mm, {self.dictionary}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BoardDef:
        return cls(int(d["squares_x"]), int(d["squares_y"]), float(d["square_mm"]),
                   float(d["marker_mm"]), str(d["dictionary"]))


def recipe_board(recipe: Recipe) -> BoardDef:
    """The board a recipe's camera calibrates with unless told otherwise: 12 x 9 squares
    spanning about BOARD_FILL of the view at the lens's focus distance (where calibration
    shoots it), the square side rounded to 0.5 mm, markers 0.75 of it. A 12 mm lens at 350 mm
    gets 5 mm squares; an 8 mm lens at 579 mm, 12 mm squares (about 48 px each)."""
    cam, lens = recipe.camera, recipe.camera.lens
    mm_per_px = lens.focus_distance_mm * lens.pixel_size_um / 1000.0 / lens.focal_length_mm
    d = BoardDef()
    side = BOARD_FILL * mm_per_px * min(cam.width / d.squares_x, cam.height / d.squares_y)
    side = max(1.0, round(2 * side) / 2)
    return BoardDef(d.squares_x, d.squares_y, side, 0.75 * side, d.dictionary)
