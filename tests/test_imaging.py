"""Image files, preprocessing and MVTec-layout folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from station.datasets import MVTecFolder, category_dirs, image_files, training_images
from station.errors import StationError
from station.imaging import (
    preprocess,
    preprocess_mask,
    read_image,
    read_mask,
    saturated_mask,
    to_uint8,
    write_png,
)
from station.recipe import PreprocessConfig


def test_png_roundtrip_and_sha(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "a" / "b" / "x.png"
    sha = write_png(path, rgb)
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
    np.testing.assert_array_equal(read_image(path), rgb)
    grey = rgb[:, :, 0].copy()
    write_png(path, grey)  # overwrite atomically
    np.testing.assert_array_equal(read_image(path), grey)
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temporary files left


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(StationError, match=r"missing\.png does not exist"):
        read_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(StationError, match=r"bad\.png is empty or not a readable image"):
        read_image(bad)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(StationError, match="empty.png"):
        read_image(tmp_path / "empty.png")


def test_a_cut_png_is_the_stations_line_alone(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    whole = tmp_path / "whole.png"
    write_png(whole, np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:-200])
    with pytest.raises(StationError, match=r"cut\.png is empty or not a readable image"):
        read_image(cut)
    assert "WARN" not in capfd.readouterr().err  # OpenCV's own warning, from C++ to stderr


def test_read_16_bit_and_alpha(tmp_path: Path) -> None:
    img16 = np.full((8, 8), 0x8000, np.uint16)
    cv2.imwrite(str(tmp_path / "16.png"), img16)
    assert read_image(tmp_path / "16.png").dtype == np.uint8
    assert read_image(tmp_path / "16.png")[0, 0] == 0x80
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 2] = 200  # red in BGR order
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    rgb = read_image(tmp_path / "a.png")
    assert rgb.shape == (8, 8, 3) and rgb[0, 0, 0] == 200



def test_read_with_a_pixel_format_takes_that_format_only(tmp_path: Path) -> None:
    files = {
        "grey.png": np.zeros((8, 8), np.uint8),
        "grey16.png": np.zeros((8, 8), np.uint16),
        "colour.png": np.zeros((8, 8, 3), np.uint8),
        "rgba.png": np.zeros((8, 8, 4), np.uint8),
    }
    for name, img in files.items():
        cv2.imwrite(str(tmp_path / name), img)
    formats = ("Mono8", "RGB8", "BayerRG8")
    accepted = {fmt: [n for n in files if _reads(tmp_path / n, fmt)] for fmt in formats}
    assert accepted == {"Mono8": ["grey.png"], "RGB8": ["colour.png"], "BayerRG8": ["colour.png"]}
    with pytest.raises(StationError, match=r"rgba.png is 8-bit RGBA; the recipe's camera \(RGB8\)"):
        read_image(tmp_path / "rgba.png", "RGB8")
    assert read_image(tmp_path / "grey16.png").dtype == np.uint8  # without a format: converted


def _reads(path: Path, fmt: str) -> bool:
    try:
        read_image(path, fmt)
    except StationError:
        return False
    return True

def test_preprocess_crop_resize_grey_to_rgb() -> None:
    img = np.zeros((100, 200), np.uint8)
    img[10:60, 20:120] = 255
    out = preprocess(img, PreprocessConfig(crop=(20, 10, 100, 50), size=(50, 25)))
    assert out.shape == (25, 50, 3) and out.min() == 255
    grey = preprocess(img, PreprocessConfig(size=(64, 32), grey_to_rgb=False))
    assert grey.shape == (32, 64)
    with pytest.raises(StationError, match="does not fit a 200 x 100 image"):
        preprocess(img, PreprocessConfig(crop=(150, 0, 100, 50)))
    with pytest.raises(StationError, match="expected H x W"):
        preprocess(np.zeros((10, 10, 2), np.uint8), PreprocessConfig())
    mask = np.zeros((100, 200), np.uint8)
    mask[10:20, 20:40] = 255
    m = preprocess_mask(mask, PreprocessConfig(crop=(20, 10, 100, 50), size=(50, 25)))
    assert m.shape == (25, 50) and set(np.unique(m)) == {0, 1} and m[0, 0] == 1


def test_mvtec_folder(tmp_path: Path) -> None:
    root = tmp_path / "cat"
    img = np.zeros((8, 8), np.uint8)
    for rel in (
        "train/good/a.png",
        "train/good/b.png",
        "test/good/c.png",
        "test/crack/d.png",
        "test/crack/e.png",
        "ground_truth/crack/d_mask.png",
    ):
        write_png(root / rel, img)
    (root / "train" / "good" / "notes.txt").write_text("x")
    f = MVTecFolder(root)
    assert [p.name for p in f.train_good()] == ["a.png", "b.png"]
    items = {i.path.name: i for i in f.test_items()}
    assert items["c.png"].label == 0 and items["c.png"].mask_path is None
    assert items["d.png"].label == 1 and items["d.png"].mask_path.name == "d_mask.png"
    assert items["e.png"].mask_path is None and items["e.png"].defect_type == "crack"
    assert category_dirs(root) == [root] and category_dirs(tmp_path) == [root]
    assert training_images(root) == f.train_good()
    plain = tmp_path / "plain"
    write_png(plain / "z.png", img)
    assert training_images(plain) == image_files(plain)
    (tmp_path / "none").mkdir()
    with pytest.raises(StationError, match="no training images"):
        training_images(tmp_path / "none")
    with pytest.raises(StationError, match="neither an MVTec-layout"):
        category_dirs(tmp_path / "none")


def test_masks_are_read_on_their_own_values_and_sized_to_their_image(tmp_path: Path) -> None:
    """A 16-bit mask of 0/1 (its high byte is all zero) is a mask; a JPEG's compression noise
    is not a defect; a mask drawn at twice the size is resized, one of another shape refused."""
    m = np.zeros((40, 60), np.uint16)
    m[10:20, 5:25] = 1
    cv2.imwrite(str(tmp_path / "m16.png"), m)
    assert read_mask(tmp_path / "m16.png", (40, 60)).sum() == 200
    assert preprocess_mask(read_mask(tmp_path / "m16.png", (40, 60)),
                           PreprocessConfig(size=(30, 20), crop=None)).sum() == 50
    noisy = (m * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "m.jpg"), noisy, [cv2.IMWRITE_JPEG_QUALITY, 60])
    jpg = read_mask(tmp_path / "m.jpg", (40, 60))
    assert abs(int(jpg.sum()) - 200) < 20 and not jpg[30:, 40:].any()
    cv2.imwrite(str(tmp_path / "big.png"), cv2.resize(noisy, (120, 80),
                                                      interpolation=cv2.INTER_NEAREST))
    assert np.array_equal(read_mask(tmp_path / "big.png", (40, 60)), (m > 0).astype(np.uint8))
    with pytest.raises(StationError, match="another shape"):
        read_mask(tmp_path / "big.png", (40, 40))
    # a float image of 0-255 values (a float TIFF of 8-bit data) is not all white
    assert to_uint8(np.array([[0.0, 100.0, 255.0]], np.float32)).tolist() == [[0, 100, 255]]
    assert to_uint8(np.array([[0.0, 0.5, 1.0]], np.float32)).tolist() == [[0, 128, 255]]


def test_a_jpeg_is_read_upright_as_its_exif_orientation_says(tmp_path: Path) -> None:
    """A photo stored 200 x 100 with 'rotate 90 degrees' in its EXIF is shown, and its mask
    drawn, 100 x 200: it is read so (it was read as stored, its mask then another shape)."""
    from PIL import Image  # torchvision's dependency: writes the EXIF tag

    stored = np.zeros((100, 200), np.uint8)
    stored[:, :20] = 255  # a bright band at the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to show
    Image.fromarray(stored).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    img = read_image(tmp_path / "photo.jpg")
    assert img.shape == (200, 100) and img[:20].mean() > 200 and img[40:].mean() < 50
    assert read_mask(tmp_path / "photo.jpg", (200, 100))[:20].all()


def test_detector_batches_convert_each_image_as_files_are_read() -> None:
    from station.detectors.common import to_batch
    from station.imaging import to_uint8

    unit = np.full((4, 4), 0.999, np.float32)  # floats in [0, 1]
    wide = np.full((4, 4), 200.0, np.float32)  # floats taken as 0-255
    deep = np.full((4, 4), 40000, np.uint16)
    batch = (to_batch([unit, wide, deep])[:, 0, 0, 0] * 255).round().tolist()
    assert batch == [255.0, 200.0, float(to_uint8(deep)[0, 0])] == [255.0, 200.0, 156.0]
    alone = (to_batch([unit])[:, 0, 0, 0] * 255).round().tolist()
    assert alone == [255.0]  # the same with or without the rest of the batch


def test_saturated_mask_marks_clipped_pixels_grown_by_two() -> None:
    grey = np.full((20, 30), 254, np.uint8)
    assert saturated_mask(grey) is None  # bright is not clipped
    grey[10, 15] = 255
    mask = saturated_mask(grey)
    assert mask is not None and mask.shape == (20, 30)
    assert mask.sum() == 25 and mask[8:13, 13:18].all()  # 5 x 5: grown by 2 px
    assert saturated_mask(grey, grow_px=0).sum() == 1
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[3, 4, 2] = 255  # one channel clipped is clipped
    assert saturated_mask(rgb, grow_px=0)[3, 4]
