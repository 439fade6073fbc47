"""Recipe schema and loader: the one place that knows the recipe YAML.

A recipe describes one product: robot poses, camera settings, preprocessing, detectors, the
decision rule, line I/O, storage and (for the simulated station) the digital twin. Units are in
the field names: millimetres and rotation vectors in radians for poses, as on the UR pendant.
The device sections (one typed config per driver) are in `station.recipe_devices`, the safe
YAML reading in `station.recipe_yaml`, the shared building blocks in `station.recipe_base`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from station.errors import RecipeError
from station.paths import resolve, station_home
from station.recipe_base import (  # noqa: F401 (re-exported: the recipe's public names)
    BOUND_ERRORS,
    DatabaseUrl,
    Pose,
    PositiveFloat,
    TimeoutS,
    Vec3,
    _finite_params,
    _is_number,
    _Strict,
    field_ranges,
)
from station.recipe_devices import (  # noqa: F401 (re-exported)
    CAMERA,
    LINE_IO,
    MAX_EXPOSURE_US,
    MAX_SENSOR_PIXELS,
    MAX_SENSOR_SIDE,
    MAX_TWIN_SIDE,
    ROBOT,
    CameraConfig,
    LensConfig,
    LineIOConfig,
    PylonCameraConfig,
    RobotConfig,
    SimCameraConfig,
    SimLineConfig,
    SimRobotConfig,
    URLineConfig,
    URRobotConfig,
    device_of,
    pick_drivers,
    plain_loc,
)
from station.recipe_quality import (  # noqa: F401 (re-exported)
    CARD,
    DriftConfig,
    MaterialCheckConfig,
    MonitoringConfig,
    ReferenceCardConfig,
    RetrainConfig,
    card_pose,
    card_problem,
)
from station.recipe_yaml import (  # noqa: F401 (re-exported)
    MAX_RECIPE_BYTES,
    MAX_YAML_DEPTH,
    MAX_YAML_VALUES,
    read_mapping,
    read_text,
)

# The device sections: each driver's config, chosen by `driver` (see station.recipe_devices).
RobotSettings = ROBOT.union()
CameraSettings = CAMERA.union()
LineIOSettings = LINE_IO.union()

MAX_DETECTOR_SIDE = 4096
DetectorSide = Annotated[int, Field(ge=1, le=MAX_DETECTOR_SIDE)]
DefectSize = Annotated[float, Field(gt=0, le=200)]


class TilingConfig(_Strict):
    """Native-resolution tiles: the (cropped) shot is cut into `preprocess.size` tiles, not
    resized; the tiles' maps are stitched back into one full-resolution shot map."""

    enabled: bool = False
    overlap_px: NonNegativeInt = 32  # least overlap between neighbouring tiles
    # training: at most this many tiles per training image, drawn at random (None: all)
    train_tiles_per_image: PositiveInt | None = None


class PreprocessConfig(_Strict):
    # x, y, width, height in camera pixels
    # (the recipe checks that the crop lies within camera.width x camera.height)
    crop: tuple[NonNegativeInt, NonNegativeInt, PositiveInt, PositiveInt] | None = None
    # width, height fed to the detectors: the whole shot resized to it, or the tile size
    size: tuple[DetectorSide, DetectorSide] = (256, 256)
    grey_to_rgb: bool = True
    tiling: TilingConfig = TilingConfig()


class SheetConfig(_Strict):
    """The product on the table, square to the robot's base axes."""

    width_mm: float = Field(300.0, ge=1, le=5000)  # along base x
    height_mm: float = Field(300.0, ge=1, le=5000)  # along base y
    center_mm: tuple[float, float] = (400.0, 0.0)  # in the robot base frame, on the table z = 0
    # find the sheet's edges in every part's shots: a sheet reaching past the inspected region
    # (its place grown by coverage.edge_margin_mm) is faulted as misplaced; needs the table
    # beside the sheet to look unlike the sheet. Not with a partial region.
    check_placement: bool = True


class CoverageConfig(_Strict):
    """What the station must see: the region, and the smallest defect it must resolve."""

    # [x0, y0, x1, y1] in mm from the sheet centre (base axes); None: the whole sheet grown
    # by edge_margin_mm on every side
    region_mm: tuple[float, float, float, float] | None = None
    edge_margin_mm: float = Field(3.0, ge=0, le=500)  # the sheet's placement tolerance
    partial: bool = False  # true: a region that leaves part of the sheet unseen is intended
    smallest_defect_mm: float = Field(2.0, gt=0, le=200)
    defect_px: float = Field(8.0, ge=1, le=1024)  # px across it at the detector input
    overlap: float = Field(0.15, ge=0, lt=1)  # share of a footprint seen by its neighbour
    # the raster reaches this far past the region on every side, so the sheet's edge never
    # lies at a shot's border, where the detectors would see it without context
    view_margin_mm: float = Field(0.0, ge=0, le=200)
    camera_height_mm: float | None = Field(None, gt=0, le=5000)  # None: from the resolution


class DetectorConfig(_Strict):
    name: str
    backbone: str = "efficientnet_lite0"
    weights: str = "auto"  # auto | package | cache | file:<path>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # what runs the network: eager PyTorch, or an export (station export) on ONNX Runtime or
    # OpenVINO; `device` maps to the runtime's providers
    runtime: Literal["torch", "onnxruntime", "openvino"] = "torch"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _finite(cls, params: dict[str, Any]) -> dict[str, Any]:
        return _finite_params(params)  # names and types: `station recipe check`

    @field_validator("name")
    @classmethod
    def _known(cls, name: str, info: ValidationInfo) -> str:
        # The detector registry's names, when the loader was given them (this layer does not
        # import detectors): station.detectors.registry.load_recipe / parse_recipe.
        known = (info.context or {}).get("detector_names")
        if known is not None and name not in known:
            raise ValueError(f"unknown detector {name!r}; known: {', '.join(known)}")
        return name

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        ok = device in ("auto", "cpu", "cuda") or (
            device.startswith("cuda:") and device[5:].isdigit()
        )
        if not ok:
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
        return device


class DecisionConfig(_Strict):
    """How scores become a part verdict. Each detector score is divided by its threshold."""

    # max / mean over the poses' image scores, or sheet_map: the peak of the part's fused
    # sheet map (the shots' maps projected onto the sheet, see sheet_fusion below)
    combine_poses: Literal["max", "mean", "sheet_map"] = "max"
    combine_detectors: Literal["any", "all", "mean"] = "any"
    calibration_file: str | None = None  # default: calibration/<recipe>.yaml
    # a threshold policy of station.calibration.policies.RULES (checked by its loader)
    policy: str = "zero_miss"
    false_reject_budget: float = Field(0.05, ge=0, le=1)
    miss_budget: float = Field(0.0, ge=0, le=1)
    # good_quantile only: threshold at this quantile of GOOD scores (no defect data behind it)
    good_quantile: float = Field(0.99, gt=0, lt=1)
    store_raw_maps: bool = False
    # the sheet map: shot maps projected onto the sheet (mm) and fused where views overlap
    sheet_fusion: Literal["max", "mean", "min"] = "max"
    sheet_map_mm_per_px: float = Field(0.5, gt=0, le=10)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, name: str, info: ValidationInfo) -> str:
        # The calibration policies' names, when the loader was given them (this layer does
        # not import calibration): station.calibration.recipes.load_recipe / parse_recipe.
        known = (info.context or {}).get("policy_names")
        if known is not None and name not in known:
            raise ValueError(f"unknown calibration policy {name!r}; known: {', '.join(known)}")
        return name


class StorageConfig(_Strict):
    database_url: DatabaseUrl = "sqlite:///data/station.db"
    data_dir: str = "data"
    # where held part records go (None: <data>/<recipe>/journal); best on another disk
    journal_dir: str | None = None
    # space kept free for the journal, given back to it when its disk is full
    journal_reserve_mb: float = Field(1.0, ge=0.0, le=1024.0)

    def resolved_database_url(self) -> str:
        """SQLite paths made absolute against the station home; other URLs untouched."""
        prefix, url = "sqlite:///", self.database_url
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix:
            rel = url[len(prefix) :]
            if rel != ":memory:":
                return prefix + str(resolve(rel))
        return url


class TwinConfig(_Strict):
    """Digital twin settings, used when a driver is `sim`."""

    seed: int = Field(0, ge=0, le=2**32 - 1)
    weave: Literal["plain", "twill", "mixed"] = "plain"
    # the texture holds a table per roving: a finer pitch means more rovings
    roving_pitch_mm: float = Field(2.5, ge=0.3, le=50)
    defect_rate: float = Field(0.3, ge=0, le=1)  # fraction of parts with at least one defect
    defect_kinds: dict[str, float] = Field(default_factory=dict)  # kind -> weight; {} = all
    defect_size_mm: tuple[DefectSize, DefectSize] = (3.0, 25.0)
    time_scale: float = Field(1.0, ge=0, le=10)  # 0: no waiting, 1: real time
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _twin_params(cls, params: dict[str, Any]) -> dict[str, Any]:
        """Finite numbers everywhere, and the types of the twin's own scalar settings (the
        twin checks the rest: faults, camera truth, ...)."""
        params = _finite_params(params)
        light = params.get("side_light_mm")
        if light is not None and not (
            isinstance(light, list | tuple)
            and len(light) == 3
            and all(_is_number(v) for v in light)
            and light[2] > 0
        ):
            raise ValueError(f"side_light_mm must be [x, y, z] in mm, z above 0, not {light!r}")
        for key in (
            "reference_exposure_us",
            "line_transfer_s",
            "angular_speed_rad_s",
            "angular_acceleration_rad_s2",
        ):
            if key in params and not (_is_number(params[key]) and params[key] > 0):
                raise ValueError(f"{key} must be a number above 0, not {params[key]!r}")
        return params


class Recipe(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    backend: Literal["sim", "real"] = "sim"
    robot: RobotSettings
    camera: CameraSettings  # default: the backend's camera with default settings
    preprocess: PreprocessConfig = PreprocessConfig()
    sheet: SheetConfig = SheetConfig()
    coverage: CoverageConfig = CoverageConfig()
    detectors: list[DetectorConfig] = Field(min_length=1)
    decision: DecisionConfig = DecisionConfig()
    line_io: LineIOSettings  # default: the backend's line I/O with default settings
    storage: StorageConfig = StorageConfig()
    twin: TwinConfig = TwinConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    retrain: RetrainConfig = RetrainConfig()

    # Where the recipe was read from and its content hash (not part of the YAML).
    source: str = Field("", exclude=True)
    sha256: str = Field("", exclude=True)
    # The recipe that declares robot.poses_file (a base when inherited through `extends:`):
    # the file is read relative to it.
    poses_source: str = Field("", exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _drivers(cls, data: Any) -> Any:
        """`auto` drivers resolved against `backend`; other drivers' settings checked, left out."""
        return pick_drivers(data) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _unique_detectors(self) -> Recipe:
        names = [d.name for d in self.detectors]
        if len(set(names)) != len(names):
            raise ValueError("each detector may appear once in `detectors`")
        return self

    @model_validator(mode="after")
    def _fits_camera(self) -> Recipe:
        crop, cam = self.preprocess.crop, self.camera
        if crop is not None and (crop[0] + crop[2] > cam.width or crop[1] + crop[3] > cam.height):
            raise ValueError(
                f"preprocess.crop: {list(crop)} (x, y, width, height) must lie within the "
                f"camera's {cam.width} x {cam.height} image"
            )
        if self.camera_driver == "sim" and max(cam.width, cam.height) > MAX_TWIN_SIDE:
            side = "width" if cam.width > MAX_TWIN_SIDE else "height"
            raise ValueError(
                f"camera.{side}: the twin camera (driver sim) renders at most {MAX_TWIN_SIDE} x "
                f"{MAX_TWIN_SIDE} px (about 0.2 kB of memory per pixel), not "
                f"{cam.width} x {cam.height}"
            )
        return self

    @model_validator(mode="after")
    def _tiles_fit(self) -> Recipe:
        """With tiling, the tile (preprocess.size) must fit the shot and exceed the overlap."""
        pre = self.preprocess
        if not pre.tiling.enabled:
            return self
        (tw, th), crop = pre.size, pre.crop
        sw, sh = self.shot_wh
        if tw > sw or th > sh:
            raise ValueError(
                f"preprocess.size: the {tw} x {th} tile is larger than the {sw} x {sh} shot "
                f"({'preprocess.crop' if crop else 'camera width x height'}); use a tile within "
                "the shot, or switch preprocess.tiling off"
            )
        if pre.tiling.overlap_px >= min(tw, th):
            raise ValueError(
                f"preprocess.tiling.overlap_px: {pre.tiling.overlap_px} must be smaller than the "
                f"tile's smaller side ({min(tw, th)} px, preprocess.size)"
            )
        return self

    @model_validator(mode="after")
    def _real_line_sees_real_sheets(self) -> Recipe:
        """A real line's verdicts must come from the real cell, not from the twin's images."""
        if self.line_driver == "sim":
            return self
        for section, driver in (("robot", self.robot_driver), ("camera", self.camera_driver)):
            if driver == "sim":
                raise ValueError(
                    f"{section}.driver: sim with line_io.driver {self.line_driver}: real "
                    "sheets would be judged on the twin's shots; give the "
                    f"{section} its real driver, or use the twin's line (line_io.driver: sim)"
                )
        return self

    @model_validator(mode="after")
    def _map_resolves_gaps(self) -> Recipe:
        """The sheet map's grid finds unseen regions by cell centres (every combine_poses)."""
        cell, smallest = self.decision.sheet_map_mm_per_px, self.coverage.smallest_defect_mm
        if cell > smallest / 2:
            raise ValueError(
                f"decision.sheet_map_mm_per_px: {cell:g} mm cells can miss an unseen gap as "
                f"narrow as coverage.smallest_defect_mm ({smallest:g} mm); use at most "
                f"{smallest / 2:g} mm/px"
            )
        return self

    @model_validator(mode="after")
    def _reference_card(self) -> Recipe:
        """The drift reference card must lie outside the inspected region (and its pose name
        is its own)."""
        bad = card_problem(self)
        if bad:
            raise ValueError(bad)
        return self

    @property
    def shot_wh(self) -> tuple[int, int]:
        """(width, height) of a shot as the detectors get it: preprocess.crop, else the camera's."""
        crop = self.preprocess.crop
        return (crop[2], crop[3]) if crop else (self.camera.width, self.camera.height)

    # -- drivers: `auto` was resolved against the backend when the recipe was read ---------
    @property
    def robot_driver(self) -> str:
        return self.robot.driver

    @property
    def camera_driver(self) -> str:
        return self.camera.driver

    @property
    def line_driver(self) -> str:
        return self.line_io.driver

    # -- where this recipe's files go -----------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return resolve(self.storage.data_dir) / self.name

    @property
    def dataset_dir(self) -> Path:
        """Captured shots in MVTec-AD layout."""
        return self.data_dir / "dataset"

    @property
    def images_dir(self) -> Path:
        """Shots and heatmaps of inspected parts."""
        return self.data_dir / "images"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def calibration_path(self) -> Path:
        return resolve(self.decision.calibration_file or f"calibration/{self.name}.yaml")

    def detector(self, name: str) -> DetectorConfig:
        for d in self.detectors:
            if d.name == name:
                return d
        raise KeyError(name)


def _format_error(err: dict[str, Any]) -> str:
    loc = plain_loc(err["loc"])
    where = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    dev = device_of(str(loc[0])) if len(loc) == 1 else None
    if kind == "union_tag_invalid" and dev is not None:
        names = [repr(n) for n in dev.driver_names()]
        allowed = f"{', '.join(names[:-1])} or {names[-1]}"
        tag = err["input"].get("driver") if isinstance(err["input"], dict) else None
        got = "" if isinstance(tag, dict | list) else f" (got {tag!r})"
        return f"{where}.driver: Input should be {allowed}{got}"
    if kind in BOUND_ERRORS:
        ranges = field_ranges(Recipe, [], "", {})
        for key in (where, re.sub(r"\.\d+(?=\.|$)", ".*", where)):
            if key in ranges:
                return f"{where}: must be {ranges[key]} (got {err.get('input')!r})"
    if kind == "extra_forbidden":
        return f"{where}: unknown field (typo?)"
    if kind == "missing":
        return f"{where}: required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"] and re.match(r"[a-z_]+\.[a-z_.]+: ", msg):
        return msg  # a whole-recipe check that names its field
    got = err.get("input")
    if kind not in ("missing",) and not isinstance(got, dict | list) and got is not None:
        return f"{where}: {msg} (got {got!r})"
    return f"{where}: {msg}"


def find_recipe(name_or_path: str) -> Path:
    """A recipe path from a name (`recipes/<name>.yaml` under the station home) or a path (a
    relative one from the current folder when it is there, else from the station home).

    A bare word without .yaml/.yml is always a name, whatever the current folder holds (a
    data folder named after its recipe, say)."""
    p = Path(name_or_path).expanduser()
    not_a_path = "/" not in name_or_path and name_or_path not in (".", "..", "~")
    if p.suffix not in (".yaml", ".yml") and not_a_path:
        path = station_home() / "recipes" / f"{name_or_path}.yaml"
    elif p.exists():
        path = p.resolve()
    else:
        path = resolve(p)
    if path.is_dir():
        raise RecipeError(str(path), ["is a folder, not a recipe file; give a recipe .yaml file"])
    if not path.is_file():
        raise RecipeError(
            str(path),
            [f"file not found; give a recipe name from {station_home() / 'recipes'} or a path"],
        )
    return path


def _overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


def _declares_poses_file(data: dict[str, Any]) -> bool:
    robot = data.get("robot")
    return isinstance(robot, dict) and "poses_file" in robot


def _resolve_extends(
    data: dict[str, Any], source: str, seen: tuple[str, ...]
) -> tuple[dict[str, Any], list[str], str]:
    """The recipe's fields with its `extends:` chain applied, the texts of the bases, and the
    recipe of the chain that declares robot.poses_file (this one when none does)."""
    base_name = data.pop("extends", None)
    if base_name is None:
        return data, [], source
    if not isinstance(base_name, str) or not base_name:
        raise RecipeError(source, ["extends: expected the name or path of another recipe"])
    if "name" not in data:
        raise RecipeError(
            source, ["name: required in a recipe that extends another (their data would mix)"]
        )
    base_path = find_recipe(base_name)
    key = str(base_path.resolve())
    if key in seen:
        raise RecipeError(source, [f"extends: {base_name!r} extends this recipe again (a loop)"])
    base_text = read_text(base_path)
    base, texts, poses_source = _resolve_extends(
        read_mapping(base_text, str(base_path)), str(base_path), (*seen, key)
    )
    if _declares_poses_file(data):
        poses_source = source
    return _overlay(base, data), [*texts, base_text], poses_source


def poses_path(poses_file: str, source: str) -> Path:
    """Where `robot.poses_file` points: relative to the recipe's folder (or, when the recipe
    was not read from a file, the station home, else its `recipes/` folder where it is)."""
    p = Path(poses_file).expanduser()
    if p.is_absolute():
        return p
    src = Path(source)
    if src.is_file():
        return src.parent / p
    in_recipes = resolve(Path("recipes") / p)
    return in_recipes if not resolve(p).is_file() and in_recipes.is_file() else resolve(p)


def _read_poses_file(data: dict[str, Any], source: str, planning: bool = False) -> str | None:
    """Fill `robot.poses` from `robot.poses_file`; the file's text (for the digest) or None.
    `planning` (station plan-poses, which writes the file): a missing file leaves the home
    pose as the only pose."""
    robot = data.get("robot")
    if not isinstance(robot, dict) or robot.get("poses_file") is None:
        return None
    name = robot["poses_file"]
    if not isinstance(name, str) or not name:
        raise RecipeError(source, ["robot.poses_file: expected a file name, e.g. poses.yaml"])
    if "poses" in robot:
        raise RecipeError(source, [
            "robot.poses: give the poses inline or in robot.poses_file, not both"])
    path = poses_path(name, source)
    if planning and not path.is_file():
        robot["poses"] = [robot.get("home")]
        return None
    if not path.is_file():
        raise RecipeError(source, [
            f"robot.poses_file: {path} not found; write it with station plan-poses"])
    text = read_text(path)
    loaded = read_mapping(text, str(path))
    poses = loaded.get("poses")
    if not isinstance(poses, list):
        raise RecipeError(str(path), ["poses: expected a list of poses (station plan-poses)"])
    robot["poses"] = poses
    return text


def parse_recipe(
    text: str,
    source: str = "<string>",
    detector_names: Collection[str] | None = None,
    planning: bool = False,
    *,
    policy_names: Collection[str] | None = None,
) -> Recipe:
    """A validated recipe from YAML text. `extends: <recipe>` starts from another recipe's
    fields: nested sections merge key by key, lists (poses, detectors) are replaced whole.
    Detector names are checked against `detector_names`, decision.policy against
    `policy_names`, each when given."""
    seen = (str(Path(source).resolve()),) if Path(source).is_file() else ()
    data, base_texts, poses_source = _resolve_extends(read_mapping(text, source), source, seen)
    poses_text = _read_poses_file(data, poses_source, planning)
    if poses_text is not None:
        base_texts.append(poses_text)
    try:
        names = {"detector_names": detector_names, "policy_names": policy_names}
        context = {k: tuple(v) for k, v in names.items() if v is not None} or None
        recipe = Recipe.model_validate(data, context=context)
    except ValidationError as exc:
        raise RecipeError(source, [_format_error(e) for e in exc.errors()]) from None
    # The effective recipe changes when a base does: the digest covers the whole chain.
    digest = hashlib.sha256("\0".join([*base_texts, text]).encode()).hexdigest()
    return recipe.model_copy(
        update={"source": source, "sha256": digest, "poses_source": poses_source}
    )


def load_recipe(
    name_or_path: str,
    detector_names: Collection[str] | None = None,
    planning: bool = False,
    *,
    policy_names: Collection[str] | None = None,
) -> Recipe:
    """`planning`: a missing robot.poses_file is no error (see `_read_poses_file`)."""
    path = find_recipe(name_or_path)
    text = read_text(path)
    return parse_recipe(text, str(path), detector_names, planning, policy_names=policy_names)
