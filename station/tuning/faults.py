"""Synthetic defects for `station tune`: one fault drawn on a copy of a good image, with its mask.

Six kinds, each a function `(image, rng, scale) -> (faulty copy, mask)`:
- scratch: a thin long line, lighter or darker than the surface;
- speck: a small cluster of dots;
- stain: a soft-edged, low-contrast blob;
- missing_texture: a region whose texture is replaced by its local mean (a heavy blur);
- fold: a band across which the texture is shifted, with a shading gradient along the fold;
- foreign_object: a small object of another texture and colour laid on the surface.

`scale` is the side of one detector input (the recipe's tile, or the whole resized shot):
faults span a few pixels to about a sixth of it, wherever they land in a larger image.
Images are uint8, H x W (grey) or H x W x C. A fault changes pixels inside its mask only (the
drawn region; outside it the original is kept), and the same rng state draws the same fault.

These are wider than DFDA's training faults (station.detectors.dfda_faults: paste, line,
blob, blur), which teach DFDA's attention; here they score candidates, so the two sets are
kept apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from station.errors import StationError

FaultFn = Callable[[np.ndarray, np.random.Generator, float], tuple[np.ndarray, np.ndarray]]


def _as_float(image: np.ndarray) -> np.ndarray:
    """H x W x C float32 copy of a uint8 image (grey gets one channel)."""
    img = np.asarray(image)
    if img.ndim not in (2, 3) or min(img.shape[:2]) < 8:
        raise StationError(f"synthetic defects need an image of at least 8 x 8 px, not {img.shape}")
    return (img[:, :, None] if img.ndim == 2 else img).astype(np.float32)


def _finish(
    src: np.ndarray, drawn: np.ndarray, region: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`drawn` kept on `region` only, rounded to uint8 in `src`'s shape; (image, mask)."""
    img = _as_float(src)
    out = np.where(region[:, :, None], np.clip(np.rint(drawn), 0, 255), img).astype(np.uint8)
    return (out[:, :, 0] if np.asarray(src).ndim == 2 else out), region.copy()


def _frame(
    hw: tuple[int, int], centre: tuple[float, float], angle: float
) -> tuple[np.ndarray, np.ndarray]:
    """(along, across) coordinates of every pixel in a frame at `centre` rotated by `angle`."""
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float32)
    dy, dx = yy - centre[0], xx - centre[1]
    c, s = math.cos(angle), math.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c


def _ellipse_radius(
    hw: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float], angle: float
) -> np.ndarray:
    """Normalised elliptic radius of every pixel (1 on the ellipse's edge)."""
    along, across = _frame(hw, centre, angle)
    return np.sqrt((along / max(radii[0], 0.5)) ** 2 + (across / max(radii[1], 0.5)) ** 2)


def _centre(hw: tuple[int, int], rng: np.random.Generator, margin: float) -> tuple[float, float]:
    """A random point at least `margin` px inside the image (where it fits)."""
    m0, m1 = min(margin, hw[0] / 2 - 1), min(margin, hw[1] / 2 - 1)
    return float(rng.uniform(m0, hw[0] - m0)), float(rng.uniform(m1, hw[1] - m1))


def _sign(rng: np.random.Generator) -> float:
    return 1.0 if rng.random() < 0.5 else -1.0


def _delta(img: np.ndarray, region: np.ndarray, want: float) -> float:
    """A signed brightness change of size `want`, flipped when the region's mean leaves no room
    for it (a bright fault on a white surface becomes a dark one)."""
    mean = float(img[region].mean()) if region.any() else 128.0
    if want > 0 and mean + want > 250:
        return -want
    if want < 0 and mean + want < 5:
        return -want
    return want


def scratch(
    image: np.ndarray, rng: np.random.Generator, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """A thin, long, straight line, lighter or darker (its contrast varies a little along it)."""
    img = _as_float(image)
    hw = img.shape[:2]
    width = float(rng.uniform(1.0, max(1.5, scale / 80)))
    length = float(rng.uniform(0.3, 1.0)) * scale
    along, across = _frame(hw, _centre(hw, rng, 4), float(rng.uniform(0, math.pi)))
    region = (np.abs(across) <= width / 2) & (np.abs(along) <= length / 2)
    if not region.any():  # a sub-pixel line between pixel centres: widen it to one pixel
        region = (np.abs(across) <= 0.75) & (np.abs(along) <= length / 2)
    delta = _delta(img, region, float(rng.uniform(30, 90)) * _sign(rng))
    ripple = 1.0 + 0.25 * np.sin(along / max(4.0, scale / 16) + float(rng.uniform(0, 6.3)))
    return _finish(image, img + (delta * ripple)[:, :, None], region)


def speck(
    image: np.ndarray, rng: np.random.Generator, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """A small cluster of 1-6 dots (each 1-4 px across at a 256 px scale), all lighter or all
    darker."""
    img = _as_float(image)
    hw = img.shape[:2]
    spread = float(rng.uniform(2, max(3.0, scale / 24)))
    cy, cx = _centre(hw, rng, spread + 3)
    region = np.zeros(hw, bool)
    for _ in range(int(rng.integers(1, 7))):
        r = float(rng.uniform(0.8, max(1.2, scale / 128)))
        dot = (cy + rng.normal(0, spread / 2), cx + rng.normal(0, spread / 2))
        region |= _ellipse_radius(hw, dot, (r, r), 0.0) <= 1.0
    if not region.any():
        region[int(cy), int(cx)] = True
    delta = _delta(img, region, float(rng.uniform(50, 110)) * _sign(rng))
    return _finish(image, img + delta, region)


def stain(
    image: np.ndarray, rng: np.random.Generator, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged, low-contrast blob: full strength at the centre, fading to nothing at the
    edge of its ellipse."""
    img = _as_float(image)
    hw = img.shape[:2]
    radii = (float(rng.uniform(scale / 40, scale / 12)), float(rng.uniform(scale / 40, scale / 12)))
    rad = _ellipse_radius(hw, _centre(hw, rng, max(radii)), radii, float(rng.uniform(0, math.pi)))
    weight = np.clip(1.0 - rad**2, 0.0, 1.0) ** 0.7
    region = weight > 0.0
    delta = _delta(img, region, float(rng.uniform(12, 35)) * _sign(rng))
    return _finish(image, img + (delta * weight)[:, :, None], region)


def missing_texture(
    image: np.ndarray, rng: np.random.Generator, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """A region whose weave is gone: replaced by the local mean (a box blur wider than it)."""
    img = _as_float(image)
    hw = img.shape[:2]
    radii = (float(rng.uniform(scale / 32, scale / 12)), float(rng.uniform(scale / 32, scale / 12)))
    centre = _centre(hw, rng, max(radii))
    region = _ellipse_radius(hw, centre, radii, float(rng.uniform(0, math.pi))) <= 1.0
    k = int(2 * max(radii)) | 1
    blurred = cv2.blur(img, (k, k), borderType=cv2.BORDER_REFLECT)
    blurred = blurred[:, :, None] if blurred.ndim == 2 else blurred
    return _finish(image, blurred, region)


def fold(
    image: np.ndarray, rng: np.random.Generator, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """A crease: in a band along a line the texture is shifted across the line, darkened at the
    line and shaded lighter on one side, the shading fading across the band."""
    img = _as_float(image)
    hw = img.shape[:2]
    half = float(rng.uniform(scale / 40, scale / 12))
    length = float(rng.uniform(0.4, 1.0)) * scale
    angle = float(rng.uniform(0, math.pi))
    along, across = _frame(hw, _centre(hw, rng, half + 2), angle)
    region = (np.abs(across) <= half) & (np.abs(along) <= length / 2)
    shift = float(rng.uniform(2, max(3.0, half)))
    # sample each pixel from `shift` px across the fold (replicated at the image's edge)
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float32)
    map_x = xx - shift * -math.sin(angle) * np.sign(across)
    map_y = yy - shift * math.cos(angle) * np.sign(across)
    moved = cv2.remap(img, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    moved = moved[:, :, None] if moved.ndim == 2 else moved
    depth = float(rng.uniform(15, 45))
    fade = np.exp(-np.abs(across) / max(1.0, half / 3))
    shade = -depth * fade + 0.4 * depth * np.tanh(across / max(1.0, half / 2)) * (1 - fade)
    return _finish(image, moved + shade[:, :, None], region)


def _object_texture(
    hw: tuple[int, int], channels: int, rng: np.random.Generator, scale: float
) -> np.ndarray:
    """An H x W x C texture unlike a weave: smoothed noise around a random colour."""
    noise = rng.normal(0, 1, (*hw, channels)).astype(np.float32)
    sigma = float(rng.uniform(0.8, max(1.0, scale / 64)))
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    smooth = smooth[:, :, None] if smooth.ndim == 2 else smooth
    colour = rng.uniform(20, 235, channels).astype(np.float32)
    return colour + smooth / (smooth.std() + 1e-6) * float(rng.uniform(8, 30))


def foreign_object(
    image: np.ndarray, rng: np.random.Generator, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """A small object (a nut, a chip, a fibre tuft) of another texture and colour, with a dark
    rim where it meets the surface."""
    img = _as_float(image)
    hw = img.shape[:2]
    radii = (float(rng.uniform(scale / 40, scale / 12)), float(rng.uniform(scale / 48, scale / 14)))
    rad = _ellipse_radius(hw, _centre(hw, rng, max(radii)), radii, float(rng.uniform(0, math.pi)))
    wobble = 1.0 + 0.15 * rng.standard_normal(hw).astype(np.float32)
    region = rad * cv2.GaussianBlur(wobble, (0, 0), max(1.0, scale / 64)) <= 1.0
    if not region.any():
        region = rad <= 1.0
    texture = _object_texture(hw, img.shape[2], rng, scale)
    # keep it visible: an object near the surface's own level is pushed away from it
    gap = texture[region].mean() - img[region].mean() if region.any() else 0.0
    if abs(gap) < 40:
        texture += (40 - abs(gap)) * (1.0 if gap >= 0 else -1.0)
    rim = (rad > 0.8) & region
    texture[rim] *= 0.6
    return _finish(image, texture, region)


KINDS: dict[str, FaultFn] = {
    "scratch": scratch,
    "speck": speck,
    "stain": stain,
    "missing_texture": missing_texture,
    "fold": fold,
    "foreign_object": foreign_object,
}


VISIBLE_LEVELS = 8  # a fault must change some pixels by at least this many grey levels ...
VISIBLE_PIXELS = 3  # ... at least this many of them (else it is drawn again elsewhere)
TRIES = 12


def visible(image: np.ndarray, faulty: np.ndarray) -> bool:
    """Whether a fault changed enough pixels enough to be a defect at all (missing texture on
    a flat region, or a stain on a saturated one, may change nothing)."""
    diff = np.abs(faulty.astype(np.int16) - np.asarray(image).astype(np.int16))
    if diff.ndim == 3:
        diff = diff.max(axis=2)
    return int(np.count_nonzero(diff >= VISIBLE_LEVELS)) >= VISIBLE_PIXELS


def make_defect(
    image: np.ndarray, kind: str, rng: np.random.Generator, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """One visible fault of `kind` on a copy of `image`: (faulty image, H x W bool mask).
    An invisible draw is drawn again from the same rng (so still reproducible), up to TRIES
    times; on an image too flat for it the last draw is returned."""
    if kind not in KINDS:
        raise StationError(f"unknown synthetic defect {kind!r}; known: {', '.join(KINDS)}")
    for _ in range(TRIES):
        out, mask = KINDS[kind](image, rng, float(scale))
        if visible(image, out):
            break
    return out, mask


def synthetic_set(
    images: Sequence[np.ndarray],
    n: int,
    scale: float,
    seed: int,
    kinds: Sequence[str] = tuple(KINDS),
) -> tuple[list[np.ndarray], list[str], list[np.ndarray]]:
    """`n` faulty copies of `images`: kinds in turn, source images in turn (offset so every
    kind meets every image when there are enough), each drawn with its own seeded rng.
    Returns (images, kinds, masks)."""
    if not images or not kinds:
        raise StationError("synthetic defects need at least one good image and one kind")
    out, names, masks = [], [], []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        src = images[(i + i // len(kinds)) % len(images)]
        img, mask = make_defect(src, kind, np.random.default_rng([seed, i]), scale)
        out.append(img)
        names.append(kind)
        masks.append(mask)
    return out, names, masks
