"""The simulated cell: the sheet on the table, the robot's TCP, a clock, and injectable faults.

`TwinWorld(recipe, seed)` is shared by the simulated robot, camera and line. It makes sheets
from seeds (`make_sheet`: weave variation, defects at the configured rate, centred anywhere on
the sheet, edges included, whatever the recipe's poses see), renders what the camera sees from
the current TCP (`render`, with the ring light's glare: `station.twin.glare`), keeps the
simulated time (`wait`, scaled by `twin.time_scale`: 0 never sleeps) and holds the faults the
devices raise (`inject_fault`). `sheet_truth` lists the current sheet's defects in the robot
base frame (mm on the table), to count what a recipe misses.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from station.errors import RecipeError
from station.recipe import Pose, Recipe
from station.twin import glare, optics
from station.twin.ageing import Ageing
from station.twin.board_scene import BoardScene
from station.twin.defects import KINDS
from station.twin.layers import defect_bounds, render_layers
from station.twin.material_switch import MaterialSwitch
from station.twin.reference_card import ReferenceCard, lamp_jitter
from station.twin.render import Lighting, Shot, shade
from station.twin.sheet import (
    DefectSpec,
    Layers,
    Region,
    SheetSpec,
    SheetTexture,
)
from station.twin.truth import BoardOnTable, TrueCamera
from station.twin.variant import Variant

FAULT_KINDS = (
    "protective_stop", "link_lost", "camera_timeout", "failed_buffer", "misplaced_sheet",
)
MISPLACED_MM = (9.0, -4.0)  # how far the line's "misplaced_sheet" fault puts a sheet off its place
MAX_TEXELS = 4_000_000  # largest layer raster rendered at once
CACHE_SIZE = 3
PPM_STEPS = 16  # layer rasters use px/mm from the ladder 2^(k/16)


@dataclass
class Fault:
    kind: str
    after: int = 0  # operations that still succeed before it fires
    count: int | None = None  # how many times it fires; None: until cleared


def pose_tcp(pose: Pose) -> np.ndarray:
    return np.array([*pose.position_mm, *pose.rotvec_rad], np.float64)


def snap_ppm(ppm: float, cap: float) -> float:
    """`ppm` rounded up to the ladder 2^(k/16) (at most `cap`, then rounded down)."""
    up = 2.0 ** (math.ceil(PPM_STEPS * math.log2(ppm)) / PPM_STEPS)
    if up <= cap:
        return up
    return 2.0 ** (math.floor(PPM_STEPS * math.log2(cap)) / PPM_STEPS)


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0]
               & 0x7FFFFFFF)


# every key twin.params may hold, by the module that reads it
PARAMS = (
    "side_light_mm", "reference_exposure_us", "first_sheet", "faults",  # world
    *glare.DEFAULTS,  # glare, glare_lobe_deg, sheet_bow_mrad
    "camera_truth", "calibration_board",  # truth
    "variant", "material_switch", "lamp_dim", "defocus", "stops_creep",  # variant, ageing
    "lamp_jitter",  # reference_card
    "line_transfer_s", "line_parts",  # line
    "angular_speed_rad_s", "angular_acceleration_rad_s2",  # robot
)  # fmt: skip


def unknown_params(params: dict[str, Any]) -> list[str]:
    """One problem per twin.params key the twin does not read (a misspelt one would be
    silently ignored), with the nearest known key."""
    out = []
    for key in sorted(set(params) - set(PARAMS)):
        near = difflib.get_close_matches(str(key), PARAMS, n=1)
        hint = f"did you mean {near[0]}?" if near else "known: " + ", ".join(sorted(PARAMS))
        out.append(f"twin.params.{key}: not a twin setting; {hint}")
    return out


class TwinWorld:
    def __init__(self, recipe: Recipe, seed: int | None = None, *,
                 defect_rate: float | None = None, sheets_before: int = 0) -> None:
        self.recipe = recipe
        self.twin = recipe.twin
        self.seed = int(self.twin.seed if seed is None else seed)
        self.defect_rate = self.twin.defect_rate if defect_rate is None else float(defect_rate)
        self.time_scale = float(self.twin.time_scale)
        self.kinds, self.kind_weights = self._kinds()
        params = self.twin.params
        if unknown := unknown_params(params):
            raise RecipeError(recipe.source or recipe.name, unknown)
        cx, cy = recipe.sheet.center_mm
        try:  # the glare, the true camera and board (twin.params); nominal camera when not set
            self.lighting = Lighting(
                side_light_mm=tuple(params.get("side_light_mm", (cx - 300.0, cy + 150.0, 650.0))),
                reference_exposure_us=float(params.get("reference_exposure_us", 8000.0)),
                **glare.params_from(params),
            )
            self.truth = TrueCamera.from_recipe(recipe)
            self.board_placed = BoardOnTable.from_recipe(recipe)
            self.variant = Variant.from_params(params)
            self.ageing = Ageing.from_params(params)  # lamp_dim, defocus, stops_creep
            self.material_switch = MaterialSwitch.from_params(params)  # another cloth from part N
            self.lamp_jitter = lamp_jitter(params)  # the lamp's shot-to-shot output (the card's)
        except ValueError as exc:
            raise RecipeError(recipe.source or recipe.name, [f"twin.params.{exc}"]) from None
        self.intrinsics = self.truth.intrinsics
        self.board: BoardScene | None = None  # show_board(): the ChArUco board, not a sheet
        self.tcp = pose_tcp(recipe.robot.home)
        self.clock_s = 0.0
        self.sheet: SheetSpec | None = None
        self.part_id: str | None = None
        # the line goes on where earlier runs left it: the next sheet is sheets_before + 1,
        # unless twin.params.first_sheet pins it (to run models or runtimes on the same sheets)
        self.sheets_presented = int(sheets_before)
        first = params.get("first_sheet")
        if first is not None:
            if isinstance(first, bool) or not isinstance(first, int) or first < 1:
                raise RecipeError(recipe.source or recipe.name, [
                    f"twin.params.first_sheet: must be a whole number of at least 1, not {first!r}"
                ])  # fmt: skip
            self.sheets_presented = first - 1
        self.grabs_on_sheet = 0
        self.reject_output = False
        # the line contract's signals (see station.twin.line.SimLine), as a PLC would see them
        self.result_valid = False
        self.part_id_echo = 0
        self.heartbeat = False  # toggling
        self.line_log: list[tuple[str, object]] = []  # (signal, value) in the order set
        self.protective_stop = False
        self.link_up = True
        self.faults: dict[str, Fault] = {}
        self.jitter_rng = np.random.default_rng([self.seed, 99])
        self._queue: collections.deque[tuple[int, bool | None, str | None]] = collections.deque()
        self._tex: SheetTexture | None = None
        self._cache: list[Layers] = []
        self._truth: tuple[SheetSpec, list[dict[str, Any]]] | None = None
        # faults injected from the recipe, e.g. twin.params.faults: {protective_stop: {after: 7}}
        for kind, opts in dict(params.get("faults") or {}).items():
            try:
                self.inject_fault(kind, **dict(opts or {}))
            except (TypeError, ValueError) as exc:
                raise RecipeError(self.recipe.source or self.recipe.name,
                                  [f"twin.params.faults.{kind}: {exc}"]) from None
        self.card = ReferenceCard.from_recipe(recipe)  # monitoring.drift.reference, if mounted
        self._empty = SheetSpec(self.seed, "plain", (2.5, 2.5), (0.0, 0.0), (cx, cy), 0.0,
                                1.0, 0.0)

    def _kinds(self) -> tuple[list[str], np.ndarray]:
        given = self.twin.defect_kinds or {k: 1.0 for k in KINDS}
        unknown = sorted(set(given) - set(KINDS))
        if unknown:
            raise RecipeError(self.recipe.source or self.recipe.name, [
                f"twin.defect_kinds: unknown kind {', '.join(unknown)}; known: {', '.join(KINDS)}"
            ])
        kinds = [k for k, w in given.items() if w > 0]
        w = np.array([given[k] for k in kinds], np.float64)
        if not kinds or w.sum() <= 0:
            raise RecipeError(self.recipe.source or self.recipe.name,
                              ["twin.defect_kinds: give at least one kind a positive weight"])
        return kinds, w / w.sum()

    # -- time and faults --------------------------------------------------------------------
    def wait(self, seconds: float) -> None:
        """Advance the simulated clock; sleep `seconds * time_scale` of real time."""
        if seconds <= 0:
            return
        self.clock_s += seconds
        if self.time_scale > 0:
            time.sleep(seconds * self.time_scale)

    def inject_fault(self, kind: str, *, after: int = 0, count: int | None = None) -> None:
        """Make a fault happen at the `after`+1-th next operation of the devices it concerns.

        protective_stop: a robot move stops (latched until cleared). link_lost: the robot and
        line I/O link drops (latched). camera_timeout / failed_buffer: grab attempts fail,
        `count` times (None: every attempt until cleared). misplaced_sheet: the line brings
        sheets MISPLACED_MM off their place.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        for name, value in (("after", after), ("count", count)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{name} must be a whole number of operations, not {value!r}")
        self.faults[kind] = Fault(kind, after=max(0, int(after)), count=count)

    def clear_faults(self) -> None:
        """Remove injected faults and reset the protective stop and the link."""
        self.faults.clear()
        self.protective_stop = False
        self.link_up = True

    def operator_fixes(self) -> None:
        """What the operator's fix at the cell does (the simulated cell has no pendant): the
        protective stop and the link reset, the faults that fired gone; faults still counting
        down to their first firing stay."""
        self.faults = {k: f for k, f in self.faults.items() if f.after > 0}
        self.protective_stop = False
        self.link_up = True

    def trip(self, kind: str) -> bool:
        """Count one operation for fault `kind`; True when the fault fires now."""
        f = self.faults.get(kind)
        if f is None:
            return False
        if f.after > 0:
            f.after -= 1
            return False
        if f.count is not None:
            f.count -= 1
            if f.count <= 0:
                del self.faults[kind]
        return True

    # -- sheets -----------------------------------------------------------------------------
    def part_seed(self, index: int) -> int:
        return derive_seed(self.seed, index)

    def make_sheet(self, seed: int, defective: bool | None = None) -> SheetSpec:
        """The sheet for `seed`; `defective` None draws it at the configured defect rate."""
        tw = self.twin
        rng = np.random.default_rng([int(seed), 0])
        weave = tw.weave if tw.weave != "mixed" else str(rng.choice(["plain", "twill"]))
        pitch = tw.roving_pitch_mm
        centre = np.array(self.recipe.sheet.center_mm) + rng.normal(0, 1.0, 2)
        draw_defective = rng.uniform() < self.defect_rate
        is_defective = draw_defective if defective is None else bool(defective)
        base = SheetSpec(
            seed=int(seed),
            weave=weave,
            pitch_mm=(pitch * (1 + rng.normal(0, 0.012)), pitch * (1 + rng.normal(0, 0.012))),
            size_mm=(self.recipe.sheet.width_mm, self.recipe.sheet.height_mm),
            centre_mm=(float(centre[0]), float(centre[1])),
            angle_rad=float(rng.normal(0, 0.005)),
            brightness=float(np.clip(rng.normal(1.0, 0.035), 0.9, 1.1)),
            waviness_mm=float(abs(rng.normal(0.12, 0.04))) * pitch / 2.5,
        )
        base = self.variant.apply(base)  # a "new but good" texture (twin.params.variant)
        if not is_defective:
            return base
        n = 1 + int(rng.uniform() < 0.3)
        lo, hi = tw.defect_size_mm
        lo, hi = min(lo, hi), max(lo, hi)
        half = np.array(base.size_mm) / 2
        defects = []
        for _ in range(n):
            kind = str(rng.choice(self.kinds, p=self.kind_weights))
            size = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            # centre uniform over the whole sheet, whatever the poses see; a defect reaching
            # past the edge is cut there (fabric faults) or hangs over it (objects)
            local = rng.uniform(-half, half)
            defects.append(DefectSpec(kind, (float(local[0]), float(local[1])), size,
                                      float(rng.uniform(0, 2 * math.pi)),
                                      int(rng.integers(0, 2**31 - 1))))
        return dataclasses.replace(base, defects=tuple(defects))

    def present(self, spec: SheetSpec | None, part_id: str | None = None) -> None:
        """Put `spec` on the table (None: take the sheet away)."""
        self.sheet = spec
        self.part_id = part_id
        self.grabs_on_sheet = 0
        self._tex = SheetTexture(spec) if spec is not None else None
        self._cache = []

    def queue_sheet(self, seed: int, defective: bool | None = None,
                    part_id: str | None = None) -> None:
        """The next sheet the simulated line brings will be this one."""
        self._queue.append((int(seed), defective, part_id))

    def next_sheet(self) -> tuple[SheetSpec, str]:
        """Bring the next sheet (queued, else the next from the world's seed) onto the table."""
        self.sheets_presented += 1
        if self._queue:
            seed, defective, part_id = self._queue.popleft()
        else:
            seed, defective, part_id = self.part_seed(self.sheets_presented), None, None
        part_id = part_id or f"TWIN-{self.seed}-{self.sheets_presented:06d}"
        spec = self.make_sheet(seed, defective)
        spec = self.material_switch.apply(spec, self.sheets_presented, self.twin.roving_pitch_mm)
        x, y = spec.centre_mm
        x += self.ageing.stops_offset_mm(self.sheets_presented)  # twin.params.stops_creep
        if self.trip("misplaced_sheet"):
            x, y = x + MISPLACED_MM[0], y + MISPLACED_MM[1]
        if (x, y) != spec.centre_mm:
            spec = dataclasses.replace(spec, centre_mm=(x, y))
        self.present(spec, part_id)
        return spec, part_id

    # -- rendering --------------------------------------------------------------------------
    def _layers(self, tcp: np.ndarray) -> Layers:
        spec = self.sheet or self._empty
        pose = self.truth.pose(tcp)
        try:
            foot = optics.footprint(self.intrinsics, pose, margin_px=self.truth.margin_px(4.0))
        except ValueError:
            foot = np.array([[-1.0, -1.0], [1.0, 1.0]]) + spec.centre_mm
        local = spec.table_to_local(foot)
        need_ppm = optics.ground_px_per_mm(self.intrinsics, pose) * 1.1
        x0, y0 = local.min(axis=0)
        x1, y1 = local.max(axis=0)
        for lay in self._cache:
            if lay.region.contains(x0, y0, x1, y1) and lay.region.ppm >= 0.75 * need_ppm:
                self._cache.remove(lay)
                self._cache.insert(0, lay)
                return lay
        box, ppm = (x0, y0, x1, y1), need_ppm * 1.05
        if not self._cache:  # first render of this sheet: all poses at once, if that fits
            box, ppm = self._union(spec, box, ppm)
        bx0, by0, bx1, by1 = box
        area = (bx1 - bx0 + 2) * (by1 - by0 + 2)
        ppm = snap_ppm(ppm, min(24.0, math.sqrt(MAX_TEXELS / max(area, 1e-6))))
        # texels on the sheet's lattice for this resolution: any raster of the sheet at this
        # ppm holds the same texels, so a shot does not depend on which raster served it
        region = Region.covering(math.floor((bx0 - 1) * ppm) / ppm,
                                 math.floor((by0 - 1) * ppm) / ppm, bx1 + 1, by1 + 1, ppm)
        if self._tex is None or self._tex.spec is not spec:
            self._tex = SheetTexture(spec)
        lay = render_layers(spec, region, self._tex, self._light_xy_per_z(spec))
        self._cache.insert(0, lay)
        del self._cache[CACHE_SIZE:]
        return lay

    def _union(self, spec: SheetSpec, box: tuple[float, float, float, float], ppm: float,
               ) -> tuple[tuple[float, float, float, float], float]:
        """The raster (sheet-local box, px/mm) covering this view and every recipe pose seen
        at a similar resolution, so that all shots of a sheet share one render. Just this
        view when the union would not fit MAX_TEXELS at the resolution the poses need."""
        bx0, by0, bx1, by1 = box
        own = ppm
        for p in self.recipe.robot.poses:
            pose = self.truth.pose(pose_tcp(p))
            try:
                f = spec.table_to_local(optics.footprint(
                    self.intrinsics, pose, margin_px=self.truth.margin_px(12.0)))
            except ValueError:
                continue
            p_ppm = optics.ground_px_per_mm(self.intrinsics, pose) * 1.15
            if not 0.5 * own <= p_ppm <= 2 * own:
                continue  # a much closer or farther view: rendered on its own
            (fx0, fy0), (fx1, fy1) = f.min(axis=0), f.max(axis=0)
            bx0, by0, bx1, by1 = min(bx0, fx0), min(by0, fy0), max(bx1, fx1), max(by1, fy1)
            ppm = max(ppm, p_ppm)
        area = (bx1 - bx0 + 2) * (by1 - by0 + 2)
        if area * (0.75 * ppm * 1.1 / 1.15) ** 2 > MAX_TEXELS:  # shots would not reuse it
            return box, own
        return (bx0, by0, bx1, by1), ppm

    def _light_xy_per_z(self, spec: SheetSpec) -> tuple[float, float]:
        """Horizontal shadow offset per mm of height, in sheet-local axes (at the centre)."""
        lx, ly, lz = self.lighting.side_light_mm
        dx, dy = lx - spec.centre_mm[0], ly - spec.centre_mm[1]
        c, s = math.cos(-spec.angle_rad), math.sin(-spec.angle_rad)
        return (float((c * dx - s * dy) / lz), float((s * dx + c * dy) / lz))

    def render(self, tcp: np.ndarray | None = None, *, noise_seed: Any = None,
               exposure_us: float | None = None, gain_db: float | None = None) -> Shot:
        """What the camera sees from `tcp` (default: the robot's current TCP)."""
        tcp = self.tcp if tcp is None else np.asarray(tcp, np.float64)
        if self.board is not None:
            return self.board.render(self.truth, self.recipe.camera, tcp, self.lighting,
                                     noise_seed if noise_seed is not None
                                     else [self.seed, 11, self.grabs_on_sheet],
                                     exposure_us=exposure_us, gain_db=gain_db)
        if self.card is not None and self.card.in_view(self.truth, tcp):
            return self._render_card(tcp, noise_seed, exposure_us, gain_db)
        layers = self._layers(tcp)
        if noise_seed is None:
            noise_seed = [self.sheet.seed if self.sheet else self.seed, 7, self.grabs_on_sheet]
        lighting, exposure_us = self._aged(exposure_us)
        return shade(self.sheet, layers, self.recipe.camera, tcp, lighting, noise_seed,
                     exposure_us=exposure_us, gain_db=gain_db, truth=self.truth)

    def _aged(self, exposure_us: float | None,
              jitter: float = 0.0) -> tuple[Lighting, float | None]:
        """The lighting and exposure after the lamp's ageing (and `jitter`, a relative change
        of its output) and the lens's defocus at the current part."""
        # an ageing lamp scales the light reaching the sensor, like a shorter exposure
        light = self.ageing.light(self.sheets_presented) * (1.0 + jitter)
        blur = self.ageing.extra_blur_px(self.sheets_presented)
        if light != 1.0:
            exposure_us = (self.recipe.camera.exposure_us if exposure_us is None
                           else exposure_us) * light
        lighting = self.lighting if blur <= 0 else dataclasses.replace(
            self.lighting, base_blur_px=math.hypot(self.lighting.base_blur_px, blur))
        return lighting, exposure_us

    def _render_card(self, tcp: np.ndarray, noise_seed: Any, exposure_us: float | None,
                     gain_db: float | None) -> Shot:
        """The reference card (station.twin.reference_card): same lamp, lens and sensor as a
        sheet's shot, and the lamp's shot-to-shot jitter."""
        assert self.card is not None
        key = [self.seed, 13, self.sheets_presented, self.grabs_on_sheet]
        jitter = self.lamp_jitter * float(np.random.default_rng(key).standard_normal())
        lighting, exposure_us = self._aged(exposure_us, jitter)
        return self.card.render(self.truth, self.recipe.camera, tcp, lighting,
                                noise_seed if noise_seed is not None else [*key, 1],
                                exposure_us=exposure_us, gain_db=gain_db)

    def show_board(self, on: bool = True) -> None:
        """Put the calibration board (twin.params.calibration_board) on the table instead of
        a sheet, or take it away."""
        self.board = BoardScene(self.board_placed) if on else None

    def sheet_truth(self) -> list[dict[str, Any]]:
        """The current sheet's defects on the table, in the robot base frame (mm): kind,
        centre_mm [x, y], size_mm and bbox_mm [x0, y0, x1, y1] around the defect's drawn
        footprint (clipped by the sheet as rendered; a circle of size_mm if nothing shows).
        centroid_mm [x, y]: the centroid (mean texel position) of that drawn footprint, where a
        map of the defect centres it; centre_mm is where it was placed (its spec), which for an
        asymmetric drawing (a scratch, a screw, a roving) lies up to ~1.5 mm away; centre_mm
        when nothing shows."""
        s = self.sheet
        if s is None or not s.defects:
            return []
        if self._truth is None or self._truth[0] is not s:
            if self._tex is None or self._tex.spec is not s:
                self._tex = SheetTexture(s)
            to_table = s.local_to_table()
            out = []
            for d, box in zip(s.defects, defect_bounds(s, self._tex), strict=True):
                c = to_table @ [d.centre_mm[0], d.centre_mm[1], 1.0]
                if box is None:
                    r = d.size_mm / 2
                    box = (d.centre_mm[0] - r, d.centre_mm[1] - r,
                           d.centre_mm[0] + r, d.centre_mm[1] + r)
                x0, y0, x1, y1 = box
                corners = to_table @ np.array([[x0, x1, x1, x0], [y0, y0, y1, y1], [1, 1, 1, 1]])
                drawn = drawn_centroid(s, d, box, self._tex)
                mid = c if drawn is None else to_table @ [drawn[0], drawn[1], 1.0]
                out.append({
                    "kind": d.kind,
                    "centre_mm": [round(float(c[0]), 3), round(float(c[1]), 3)],
                    "size_mm": round(d.size_mm, 3),
                    "bbox_mm": [round(float(v), 3) for v in (*corners[:2].min(axis=1),
                                                             *corners[:2].max(axis=1))],
                    "centroid_mm": [round(float(mid[0]), 3), round(float(mid[1]), 3)],
                })
            self._truth = (s, out)
        return [dict(t) for t in self._truth[1]]

    def describe(self) -> dict[str, Any]:
        """The sheet on the table; `truth` is `sheet_truth()` (defects in base-frame mm)."""
        s = self.sheet
        return {
            "seed": self.seed,
            "sheet_seed": s.seed if s else None,
            "weave": s.weave if s else None,
            "defects": [d.as_dict() for d in s.defects] if s else [],
            "truth": self.sheet_truth(),
        }


CENTROID_PPM = 8.0  # texels per mm of the raster a defect's drawn centroid is measured on
CENTROID_TEXELS = 1_000_000  # ... fewer for a large defect


def drawn_centroid(spec: SheetSpec, defect: DefectSpec, box: tuple[float, float, float, float],
                   tex: SheetTexture) -> tuple[float, float] | None:
    """The centroid (sheet-local mm) of `defect`'s drawn footprint: the id layer of the defect
    drawn alone over its footprint's box (`defect_bounds`), clipped by the sheet as rendered;
    None if nothing of it shows."""
    x0, y0, x1, y1 = box
    ppm = min(CENTROID_PPM, math.sqrt(CENTROID_TEXELS / max((x1 - x0 + 2) * (y1 - y0 + 2), 1e-6)))
    region = Region.covering(x0 - 1.0, y0 - 1.0, x1 + 1.0, y1 + 1.0, ppm)
    ids = render_layers(dataclasses.replace(spec, defects=(defect,)), region, tex).ids == 1
    if not ids.any():
        return None
    rows, cols = np.nonzero(ids)
    return region.x0 + float(cols.mean()) / ppm, region.y0 + float(rows.mean()) / ppm
