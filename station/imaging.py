"""Image files and preprocessing shared by capture, training, evaluation and inspection.

Images in memory are uint8 numpy arrays: H x W (grey) or H x W x 3 (RGB). `read_image` and
`write_png` report missing, corrupt or unwritable files as StationError naming the file;
`write_png` writes atomically (temporary file + rename) and returns the PNG's sha256.
`saturated_mask` marks a shot's clipped pixels (the sheet map does not inspect through them).
`preprocess` applies a recipe's PreprocessConfig: crop, resize to `size` (width, height),
grey to three channels when asked. With `preprocess.tiling` enabled the shot keeps its native
size (crop and grey to RGB only): `size` is then the tile the scoring engine cuts it into.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from station.errors import StationError
from station.files import atomic_write, writing

if TYPE_CHECKING:
    from station.recipe import PreprocessConfig

# OpenCV's own warnings (a truncated PNG) would print beside the station's one-line error
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

# OpenCV functions the station needs that OpenCV 5 dropped (seen on a machine with 5.0.0).
OPENCV_NEEDS = ("undistortPointsIter", "calibrateHandEye")


def check_opencv() -> None:
    """Refuse an OpenCV without the functions the sheet map, twin and cell calibration call."""
    missing = [name for name in OPENCV_NEEDS if not hasattr(cv2, name)]
    if missing:
        raise StationError(
            f"OpenCV {cv2.__version__} lacks {', '.join(missing)}",
            hint="pip install 'opencv-python-headless>=4.10,<5' (pyproject's range)",
        )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LOSSY_SUFFIXES = (".jpg", ".jpeg")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """8-bit pixels: 16-bit keeps its high byte; floats in [0, 1] are scaled and rounded,
    floats past 1 are taken as 0-255 values (a float TIFF of 8-bit data), past 255 as 16-bit."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img >> 8).astype(np.uint8)
    if np.issubdtype(img.dtype, np.floating):
        top = float(np.nanmax(img)) if img.size else 0.0
        scale = 255.0 if top <= 1.0 else (1.0 if top <= 255.0 else 1.0 / 257.0)
        return np.clip(np.nan_to_num(img) * scale + 0.5, 0, 255).astype(np.uint8)
    return np.clip(img, 0, 255).astype(np.uint8)


# What a shot of each camera pixel format is on disk (the driver debayers BayerRG8 to RGB).
PIXEL_FORMAT_KINDS = {"Mono8": "8-bit grey", "RGB8": "8-bit colour", "BayerRG8": "8-bit colour"}


def image_kind(img: np.ndarray) -> str:
    """A decoded image's format in words, e.g. '8-bit grey', '16-bit colour', '8-bit RGBA'."""
    depth = f"{img.dtype.itemsize * 8}-bit" if img.dtype.kind == "u" else str(img.dtype)
    channels = 1 if img.ndim == 2 else img.shape[2]
    return f"{depth} " + {1: "grey", 3: "colour", 4: "RGBA"}.get(channels, f"{channels}-channel")


def decode_flags(path: Path) -> int:
    """OpenCV decode flags: every depth and channel as stored; a JPEG turned upright by its
    EXIF orientation (a camera's or phone's photo, and a mask drawn on it as shown)."""
    if path.suffix.lower() in LOSSY_SUFFIXES:
        return cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH
    return cv2.IMREAD_UNCHANGED


def read_image(path: str | Path, pixel_format: str | None = None) -> np.ndarray:
    """The image at `path` as uint8 H x W (grey) or H x W x 3 (RGB); alpha is dropped.
    With `pixel_format` (a recipe's camera.pixel_format), a file of any other format (depth,
    channels) is a StationError instead of being converted."""
    path = Path(path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except FileNotFoundError:
        raise StationError(f"image {path} does not exist", hint="check the path") from None
    except OSError as exc:
        raise StationError(f"image {path} cannot be read: {exc.strerror or exc}") from None
    img = cv2.imdecode(data, decode_flags(path)) if data.size else None
    if img is None:
        raise StationError(
            f"image {path} is empty or not a readable image file",
            hint="re-capture it or remove it from the folder",
        )
    if pixel_format is not None and image_kind(img) != PIXEL_FORMAT_KINDS[pixel_format]:
        raise StationError(
            f"image {path} is {image_kind(img)}; the recipe's camera ({pixel_format}) takes "
            f"{PIXEL_FORMAT_KINDS[pixel_format]} images",
            hint="inspect images from this recipe's camera, or fix camera.pixel_format",
        )
    img = to_uint8(img)
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        else:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


MASK_ASPECT_TOLERANCE = 0.02


def read_mask(path: str | Path, image_hw: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask as 0/1 uint8 at its image's size `image_hw` (H, W). Any pixel above
    zero in its own values is defect (16-bit masks of 0/1 too; a JPEG's compression noise needs
    half scale); a mask drawn at another size of the same shape is resized (nearest), one of
    another shape refused."""
    path = Path(path)
    try:
        raw = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), decode_flags(path))
    except OSError as exc:
        raise StationError(f"mask {path} cannot be read: {exc.strerror or exc}") from None
    if raw is None:
        raise StationError(f"mask {path} is empty or not a readable image file",
                           hint="redraw it, or remove it and its image from the test set")
    if raw.ndim == 3:
        raw = raw[:, :, : min(raw.shape[2], 3)].max(axis=2)
    raw = np.nan_to_num(raw.astype(np.float64))
    cut = 127.0 if path.suffix.lower() in LOSSY_SUFFIXES else 0.0
    mask = (raw > cut).astype(np.uint8)
    (h, w), (mh, mw) = image_hw, mask.shape
    if (mh, mw) == (h, w):
        return mask
    if abs(mw / mh - w / h) > MASK_ASPECT_TOLERANCE * (w / h):
        raise StationError(
            f"mask {path} is {mw} x {mh} px, its image {w} x {h}: another shape",
            hint="redraw the mask on its image, or remove the pair from the test set")
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)


DARK_MAX = 15  # the most a 12-bit image kept in a 16-bit file reads as, after its high byte


def flat_images(images: Sequence[np.ndarray]) -> np.ndarray:
    """Per image: one grey value throughout (nothing of the material in view)."""
    return np.array([int(img.min()) == int(img.max()) for img in images], dtype=bool)


def image_set_warnings(images: Sequence[np.ndarray], what: str) -> list[str]:
    """What a set of decoded 8-bit images says about its files: images of one flat value
    (nothing in view, or a file not decoded as its maker meant) and nearly black ones (10- or
    12-bit data in 16-bit files keep only their high byte)."""
    is_flat = flat_images(images)
    flat = int(is_flat.sum())
    dark = sum(not f and int(img.max()) <= DARK_MAX for img, f in zip(images, is_flat, strict=True))
    out = []
    if flat:
        out.append(f"{flat} of {len(images)} {what} are one flat value: nothing of the material "
                   "in view, or files not decoded as their maker meant")
    if dark:
        out.append(f"{dark} of {len(images)} {what} read no brighter than grey {DARK_MAX}: "
                   "10- or 12-bit data in 16-bit files keep only their high byte; save them "
                   "scaled to 16 bits (or as 8-bit)")
    return out


SATURATION_GROW_PX = 2  # a clipped blob's rim is clipped in part too


def saturated_mask(image: np.ndarray, grow_px: int = SATURATION_GROW_PX) -> np.ndarray | None:
    """H x W bool: the 8-bit shot's pixels at full scale (255) in any channel, grown by
    `grow_px`; None when none is. What lies there is not inspected: the sensor clipped it."""
    img = to_uint8(np.asarray(image))
    full = img >= 255
    if full.ndim == 3:
        full = full.any(axis=2)
    if not full.any():
        return None
    if grow_px > 0:
        k = np.ones((2 * grow_px + 1, 2 * grow_px + 1), np.uint8)
        full = cv2.dilate(full.astype(np.uint8), k) > 0
    return full


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 H x W or H x W x 3 (RGB) array."""
    image = check_image(image, "image to encode")
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise StationError("PNG encoding failed")
    return buf.tobytes()


def write_png(path: str | Path, image: np.ndarray) -> str:
    """Write `image` as PNG at `path` atomically (parents created); returns its sha256."""
    path = Path(path)
    data = encode_png(image)
    with writing(f"image {path}"):
        sha = atomic_write(path, data)
    return sha


def check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """`image` as uint8 H x W or H x W x 3; anything else is a StationError."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise StationError(
            f"{what} has shape {image.shape}; expected H x W (grey) or H x W x 3 (RGB)"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise StationError(f"{what} is empty (shape {image.shape})")
    return to_uint8(image)


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`image` resized to `size` (width, height): area averaging to shrink, else bilinear; the
    image itself when it already has that size."""
    width, height = size
    if (image.shape[1], image.shape[0]) == (width, height):
        return image
    shrink = width < image.shape[1] and height < image.shape[0]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def preprocess(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Crop, resize to cfg.size (width, height) and, when cfg.grey_to_rgb, make it 3-channel.
    With cfg.tiling enabled there is no resize: the shot stays at its native size."""
    image = check_image(image)
    if cfg.crop is not None:
        x, y, w, h = cfg.crop
        ih, iw = image.shape[:2]
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > iw or y + h > ih:
            raise StationError(
                f"preprocess crop {list(cfg.crop)} (x, y, width, height) does not fit a "
                f"{iw} x {ih} image",
                hint="fix preprocess.crop in the recipe",
            )
        image = image[y : y + h, x : x + w]
    if not cfg.tiling.enabled:
        image = resize(image, cfg.size)
    if cfg.grey_to_rgb and image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


def check_like(
    image: np.ndarray, path: str | Path, first: np.ndarray, first_path: str | Path
) -> None:
    """Images of one set must match after preprocessing (one batch, one model input)."""
    if image.shape == first.shape:
        return

    def kind(a: np.ndarray) -> str:
        return f"{a.shape[1]} x {a.shape[0]} px, " + ("grey" if a.ndim == 2 else "colour")

    raise StationError(
        f"image {path} is {kind(image)} after preprocessing, {first_path} is {kind(first)}",
        hint="convert the images to one kind, or set preprocess.grey_to_rgb: true",
    )


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 0/1 uint8 mask resized (nearest) to `size` (width, height)."""
    mask = check_image(mask, "mask")
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        mask = cv2.resize(mask, tuple(size), interpolation=cv2.INTER_NEAREST)
    return (mask > 0).astype(np.uint8)


def preprocess_mask(mask: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """A ground-truth mask put through the same crop and resize as its image: 0/1 uint8
    (at native size, crop only, when cfg.tiling is enabled)."""
    mask = check_image(mask, "mask")
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    if cfg.crop is not None:
        x, y, w, h = cfg.crop
        mask = mask[y : y + h, x : x + w]
    if cfg.tiling.enabled:
        return (mask > 0).astype(np.uint8)
    return resize_mask(mask, cfg.size)
