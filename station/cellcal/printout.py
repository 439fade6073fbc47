"""The calibration board as a PDF at true scale: the board image placed at its exact physical
size on an A4 page (larger boards get a page of their own size), its definition printed under
it and a 50 mm bar to check the printer's scale with a ruler."""

from __future__ import annotations

import zlib
from pathlib import Path

from station.errors import StationError
from station.files import atomic_write, writing
from station.geometry.charuco import BoardDef

PT_PER_MM = 72.0 / 25.4
PX_PER_SQUARE = 120
MARGIN_MM = 15.0


def _text(x_mm: float, y_mm: float, size: float, s: str) -> str:
    s = s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return f"BT /F1 {size:g} Tf {x_mm * PT_PER_MM:.3f} {y_mm * PT_PER_MM:.3f} Td ({s}) Tj ET\n"


def board_pdf(board: BoardDef) -> bytes:
    bw, bh = board.size_mm
    page_w, page_h = max(210.0, bw + 2 * MARGIN_MM), max(297.0, bh + 2 * MARGIN_MM + 45.0)
    img = board.image(PX_PER_SQUARE)
    h, w = img.shape
    x0, y0 = (page_w - bw) / 2, page_h - MARGIN_MM - bh  # PDF y grows upwards
    lines = [
        board.describe(),
        f"squares {board.squares_x} x {board.squares_y}, square {board.square_mm:g} mm, "
        f"marker {board.marker_mm:g} mm, dictionary {board.dictionary}",
        "Print at 100 % (no fit to page). Measure 10 squares with a ruler; if they are not "
        f"{10 * board.square_mm:g} mm,",
        "give the measured length / 10 as --square-mm. Lay the board flat on the table.",
    ]
    content = "q 0 g\n"
    content += (f"{bw * PT_PER_MM:.4f} 0 0 {bh * PT_PER_MM:.4f} {x0 * PT_PER_MM:.4f} "
                f"{y0 * PT_PER_MM:.4f} cm /Im1 Do Q\n")
    y = y0 - 10.0
    for i, line in enumerate(lines):
        content += _text(x0, y - 6.0 * i, 9, line)
    bar_y = y - 6.0 * len(lines) - 4.0
    content += (f"0 g {x0 * PT_PER_MM:.3f} {bar_y * PT_PER_MM:.3f} {50 * PT_PER_MM:.3f} "
                f"{1.0 * PT_PER_MM:.3f} re f\n")
    content += _text(x0 + 52.0, bar_y, 9, "<- this bar is 50 mm")
    stream = content.encode("latin-1")
    pixels = zlib.compress(img.tobytes(), 9)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {page_w * PT_PER_MM:.3f} "
         f"{page_h * PT_PER_MM:.3f}] /Resources << /XObject << /Im1 4 0 R >> /Font << /F1 5 0 R "
         f">> >> /Contents 6 0 R >>").encode(),
        (f"<< /Type /XObject /Subtype /Image /Width {w} /Height {h} /ColorSpace /DeviceGray "
         f"/BitsPerComponent 8 /Interpolate false /Filter /FlateDecode /Length {len(pixels)} >>"
         "\nstream\n").encode() + pixels + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(stream)} >>\nstream\n".encode() + stream + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    out += (f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n"
            ).encode()
    return bytes(out)


def write_board_pdf(board: BoardDef, path: Path) -> None:
    if path.suffix.lower() != ".pdf":
        raise StationError(f"{path} is not a .pdf file name", hint="give e.g. board.pdf")
    data = board_pdf(board)
    with writing(path):
        atomic_write(path, data)
