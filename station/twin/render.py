"""The twin's camera model: material layers -> the Mono8 image a Basler camera would deliver.

Per shot: the sheet's layers are warped into the image with the homography of the current TCP
pose (`optics`), then shaded: a ring light around the lens (diffuse, and mirror-like on metal),
a side light fixed in the cell (diffuse, anisotropic sheen along the glass fibres, shadows), a
little ambient, and the ring light's glare where the sheet's bow turns its surface normal back
at the camera (`station.twin.glare`: it lies where it is real for this view only). Then
vignetting, focus blur growing with the distance from the focal plane, exposure and gain
(signal in electrons, shot and read noise, 8-bit quantisation and clipping).
The id layer is warped with nearest-neighbour sampling into the ground-truth mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from station.geometry.coverage import blur_px
from station.recipe import CameraConfig
from station.twin import glare, optics
from station.twin.sheet import Layers, SheetSpec
from station.twin.truth import TrueCamera

FULL_WELL_E = 10500.0  # electrons at 255 DN with 0 dB gain
READ_NOISE_E = 7.0
DN_PER_RADIANCE = 238.0  # DN for radiance 1.0 at the reference exposure, 0 dB


@dataclass(frozen=True)
class Lighting:
    side_light_mm: tuple[float, float, float]  # base frame
    reference_exposure_us: float = 8000.0
    ambient: float = 0.22
    ring: float = 0.5
    side: float = 0.34
    fibre_sheen: float = 0.32
    fibre_shininess: float = 26.0
    metal_shininess: float = 60.0
    vignetting: float = 0.12  # extra fall-off at the image corner (mechanical, lens)
    base_blur_px: float = 0.45  # lens blur in focus
    glare: float = 1.0  # scale of each sheet's glossiness (0: no glare)
    glare_lobe_deg: float = 3.0  # half width of the highlight lobe
    sheet_bow_mrad: float = 3.0  # typical slope of a sheet's bow and tilt


@dataclass
class Shot:
    image: np.ndarray  # HxW uint8 (or HxWx3 for RGB8)
    mask: np.ndarray  # HxW uint8, 255 = defect
    defects: list[dict[str, Any]] = field(default_factory=list)
    blur_sigma_px: float = 0.0


def sheet_homography(spec: SheetSpec | None, layers: Layers, k: optics.Intrinsics,
                     pose: optics.CameraPose) -> np.ndarray:
    """3x3: layer raster pixel -> image pixel."""
    to_table = spec.local_to_table() if spec is not None else np.eye(3)
    return optics.plane_homography(k, pose) @ to_table @ layers.region.px_to_local()


def blur_sigma_px(cam: CameraConfig, pose: optics.CameraPose, base: float) -> float:
    """Gaussian sigma of the focus blur: thin-lens circle of confusion, in pixels."""
    lens = cam.lens
    d = optics.view_distance_mm(pose)
    if not math.isfinite(d) or d <= lens.focal_length_mm:
        return 8.0
    return float(math.hypot(base, blur_px(lens, d)))


def shade(spec: SheetSpec | None, layers: Layers, cam: CameraConfig, tcp: np.ndarray,
          light: Lighting, noise_seed: Any, exposure_us: float | None = None,
          gain_db: float | None = None, truth: TrueCamera | None = None) -> Shot:
    """`truth`: the twin's true camera (intrinsics, distortion, mounting); default the
    recipe's nominal pinhole at the TCP."""
    k = truth.intrinsics if truth is not None else optics.Intrinsics.from_camera(cam)
    pose = truth.pose(tcp) if truth is not None else optics.CameraPose.from_tcp(tcp)
    st, ids = _warp_layers(spec, layers, k, pose, truth)
    rad = _radiance(spec, st, k, pose, light)

    # vignetting: natural cos^4 plus a lens term
    uu = np.arange(k.width, dtype=np.float32)[None, :]
    vv = np.arange(k.height, dtype=np.float32)[:, None]
    r2 = ((uu - k.cx) ** 2 + (vv - k.cy) ** 2) / np.float32(k.fx * k.fx)
    rc2 = ((k.cx**2 + k.cy**2) / (k.fx * k.fx)) or 1.0
    vig = (1.0 / (1.0 + r2) ** 2) * (1.0 - light.vignetting * r2 / rc2)
    rad = rad * vig.astype(np.float32)

    sigma = blur_sigma_px(cam, pose, light.base_blur_px)
    rad = cv2.GaussianBlur(rad.astype(np.float32), (0, 0), sigma)
    image = expose(rad, cam, light, noise_seed, exposure_us, gain_db)
    mask, defects = _ground_truth(spec, ids)
    return Shot(image, mask, defects, sigma)


def _warp_layers(spec: SheetSpec | None, layers: Layers, k: optics.Intrinsics,
                 pose: optics.CameraPose, truth: TrueCamera | None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The layer stack and the defect ids as the camera sees them (through its distortion)."""
    H = sheet_homography(spec, layers, k, pose)
    size = (k.width, k.height)
    if truth is not None and truth.distorted:
        # each distorted pixel samples the layer where its pinhole ray meets the table
        ideal = truth.ideal_map().astype(np.float64)
        hi_ = np.linalg.inv(H)
        w_ = hi_[2, 0] * ideal[..., 0] + hi_[2, 1] * ideal[..., 1] + hi_[2, 2]
        mx_ = (hi_[0, 0] * ideal[..., 0] + hi_[0, 1] * ideal[..., 1] + hi_[0, 2]) / w_
        my_ = (hi_[1, 0] * ideal[..., 0] + hi_[1, 1] * ideal[..., 1] + hi_[1, 2]) / w_
        mx_, my_ = mx_.astype(np.float32), my_.astype(np.float32)
        st = cv2.remap(layers.stack, mx_, my_, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
        ids = cv2.remap(layers.ids, mx_, my_, cv2.INTER_NEAREST,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    else:
        st = cv2.warpPerspective(layers.stack, H, size, flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
        ids = cv2.warpPerspective(layers.ids, H, size, flags=cv2.INTER_NEAREST,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return st, ids


def ray_directions(k: optics.Intrinsics, pose: optics.CameraPose, light: Lighting,
                spec: SheetSpec | None = None) -> np.ndarray:
    """Per pixel: unit view, light and half vectors (9 channels), then the ring light's glare
    on the sheet's bow (1 channel; 0 without a sheet or with glare off). They vary slowly over
    the image: exact on a coarse grid (every 8th pixel), interpolated in between."""
    step = 8
    gu = np.arange(0, k.width + step, step, dtype=np.float32)[None, :]
    gv = np.arange(0, k.height + step, step, dtype=np.float32)[:, None]
    hi = np.linalg.inv(optics.plane_homography(k, pose)).astype(np.float32)
    wq = hi[2, 0] * gu + hi[2, 1] * gv + hi[2, 2]
    px_ = (hi[0, 0] * gu + hi[0, 1] * gv + hi[0, 2]) / wq
    py_ = (hi[1, 0] * gu + hi[1, 1] * gv + hi[1, 2]) / wq
    cx, cy, cz = (float(v) for v in pose.centre)
    view = np.dstack([cx - px_, cy - py_, np.full_like(px_, cz)])
    view /= np.linalg.norm(view, axis=2, keepdims=True)
    lx_, ly_, lz_ = light.side_light_mm
    lvec = np.dstack([lx_ - px_, ly_ - py_, np.full_like(px_, lz_)])
    lvec /= np.linalg.norm(lvec, axis=2, keepdims=True)
    half = view + lvec
    half /= np.linalg.norm(half, axis=2, keepdims=True)
    if spec is not None and light.glare > 0:
        gloss = glare.SheetGloss.from_spec(spec, light.sheet_bow_mrad)
        shine = light.glare * glare.highlight(spec, gloss, px_, py_, pose.centre,
                                              light.glare_lobe_deg)
    else:
        shine = np.zeros_like(px_)
    coarse = np.dstack([view, lvec, half, shine]).astype(np.float32)
    mx = np.arange(k.width, dtype=np.float32)[None, :].repeat(k.height, 0) / step
    my = np.arange(k.height, dtype=np.float32)[:, None].repeat(k.width, 1) / step
    return cv2.remap(coarse, mx, my, cv2.INTER_LINEAR)


def _radiance(spec: SheetSpec | None, st: np.ndarray, k: optics.Intrinsics,
              pose: optics.CameraPose, light: Lighting) -> np.ndarray:
    """Radiance per pixel from the warped layers: diffuse, fibre sheen, glare and metal."""
    alb, hx, hy, dirn, metal, lit = (st[..., i] for i in range(6))
    dirs = ray_directions(k, pose, light, spec)
    vx, vy, vz, lx, ly, lz, hxv, hyv, hzv, shine = (dirs[..., i] for i in range(10))

    # slopes and fibre directions from sheet-local into the base frame
    ang = spec.angle_rad if spec is not None else 0.0
    ca, sa = math.cos(ang), math.sin(ang)
    gx, gy = ca * hx - sa * hy, sa * hx + ca * hy
    nz = 1 / np.sqrt(gx * gx + gy * gy + 1)
    nx, ny = -gx * nz, -gy * nz
    n_v = np.clip(nx * vx + ny * vy + nz * vz, 0, 1)
    n_l = np.clip(nx * lx + ny * ly + nz * lz, 0, 1)

    # Kajiya-Kay sheen: fibres along (tx, ty, slope) glint where they run across the half
    # vector; warp fibres run along sheet y, weft fibres along sheet x
    weft = dirn > 0.5
    tx = np.where(weft, np.float32(ca), np.float32(-sa))
    ty = np.where(weft, np.float32(sa), np.float32(ca))
    tz = gx * tx + gy * ty
    t_h = (tx * hxv + ty * hyv + tz * hzv) / np.sqrt(1 + tz * tz)
    fib = np.power(np.clip(1 - t_h * t_h, 0, 1), light.fibre_shininess / 2)
    fib *= np.clip(2 * np.abs(dirn - 0.5), 0, 1)  # no sheen in the gaps
    rad = alb * (light.ambient + light.ring * n_v + light.side * lit * n_l
                 + light.fibre_sheen * lit * fib)
    if light.glare > 0:
        # the glare lies on the resin-coated rovings: none in the gaps, on the belt (direction
        # 0.5 there) or on metal (which mirrors the ring light itself, below)
        cover = np.clip(2 * np.abs(dirn - 0.5), 0, 1) * np.clip(1 - metal, 0, 1)
        rad = rad + shine * cover
    is_metal = metal > 1e-3
    if is_metal.any():
        # metal mirrors its surroundings: the bright fabric and dome (broad), the ring light
        # and the side light (sharp highlights)
        a_, m_, nv_, nl_, lt_, nz_ = (x[is_metal] for x in (alb, metal, n_v, n_l, lit, nz))
        n_h = np.clip(nx[is_metal] * hxv[is_metal] + ny[is_metal] * hyv[is_metal]
                      + nz_ * hzv[is_metal], 0, 1)
        spec_m = np.power(n_h, light.metal_shininess) * lt_ + 0.8 * np.power(nv_, 30.0)
        env = 0.25 + 0.45 * nz_ * nz_ + 0.3 * np.power(nl_, 4.0) * lt_
        metal_rad = a_ * (0.5 * env + 0.25 * nv_) + a_ * 1.2 * spec_m
        rad[is_metal] = rad[is_metal] * (1 - m_) + metal_rad * m_
    return rad


def expose(rad: np.ndarray, cam: CameraConfig, light: Lighting, noise_seed: Any,
            exposure_us: float | None, gain_db: float | None) -> np.ndarray:
    """The sensor: exposure, shot and read noise, saturation, gain, 8-bit pixels."""
    exposure_us = cam.exposure_us if exposure_us is None else exposure_us
    gain_db = cam.gain_db if gain_db is None else gain_db
    gain = 10 ** (gain_db / 20.0)
    dn0 = rad * DN_PER_RADIANCE * (exposure_us / light.reference_exposure_us)
    electrons = np.clip(dn0, 0, None) * (FULL_WELL_E / 255.0)
    rng = np.random.default_rng(noise_seed)
    noisy = electrons + rng.standard_normal(electrons.shape, np.float32) * np.sqrt(
        electrons + READ_NOISE_E**2
    )
    noisy = np.minimum(noisy, FULL_WELL_E * 1.05)  # the pixel well saturates
    dn = noisy * (255.0 / FULL_WELL_E) * gain
    image = np.clip(np.round(dn), 0, 255).astype(np.uint8)
    if cam.pixel_format == "RGB8":
        tint = np.array([1.0, 1.0, 0.97], np.float32)
        image = np.clip(image[..., None] * tint, 0, 255).astype(np.uint8)
    return image


def _ground_truth(spec: SheetSpec | None, ids: np.ndarray,
                  ) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The defect mask (255 = defect) and each visible defect's labels."""
    mask = np.where(ids > 0, 255, 0).astype(np.uint8)
    defects = []
    if spec is not None and mask.any():
        for did in np.unique(ids[ids > 0]):
            ys, xs = np.nonzero(ids == did)
            d = spec.defects[int(did) - 1]
            at = spec.local_to_table() @ [d.centre_mm[0], d.centre_mm[1], 1.0]
            defects.append(
                {**d.as_dict(), "id": int(did), "area_px": int(len(xs)),
                 "centre_table_mm": [round(float(at[0]), 3), round(float(at[1]), 3)],
                 "bbox_px": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]}
            )
    return mask, defects
