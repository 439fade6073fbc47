"""Recipe schema and loader: the one place that knows the recipe YAML.

A recipe describes one product: robot poses, camera settings, preprocessing, detectors, the
decision rule, line I/O, storage and (for the simulated station) the digital twin. Units are in
the field names: millimetres and rotation vectors in radians for poses, as on the UR pendant.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from station.errors import RecipeError
from station.paths import resolve, station_home

KNOWN_DETECTORS = ("patchcore", "simplenet", "efficientad", "ast_mfr", "dfda")

PositiveFloat = Annotated[float, Field(gt=0)]
Vec3 = tuple[float, float, float]
TimeoutS = Annotated[float, Field(gt=0, le=3600)]  # seconds: at most an hour

# Input limits. A recipe is a few kB and a few hundred YAML values.
MAX_RECIPE_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000  # after expanding aliases (a "billion laughs" file stops here)
MAX_YAML_DEPTH = 32  # a recipe nests 6 levels; pydantic and the checks recurse
# Camera limits: the pylon camera emulator takes up to 4096 x 4096; the largest Basler area
# sensors (boost 65 MP: 9344 x 7000) fit these too. pypylon checks the camera's own limits.
MAX_SENSOR_SIDE = 16384
MAX_SENSOR_PIXELS = 1 << 26
MAX_EXPOSURE_US = 60_000_000  # a minute; Basler cameras and the emulator stop at 10 s
MAX_TWIN_SIDE = 4096  # as the pylon emulator; a twin shot takes ~170 bytes per pixel to render
MAX_DETECTOR_SIDE = 4096
DetectorSide = Annotated[int, Field(ge=1, le=MAX_DETECTOR_SIDE)]
DefectSize = Annotated[float, Field(gt=0, le=200)]


def _non_finite(value: Any, path: str) -> list[str]:
    """Paths of the inf/nan floats in a tree of dicts and lists."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{path.lstrip('.')} = {value}"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _non_finite(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _non_finite(v, f"{path}.{i}")]
    return []


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite_params(params: dict[str, Any]) -> dict[str, Any]:
    bad = _non_finite(params, "")
    if bad:
        raise ValueError(f"{', '.join(bad)}: every number must be finite (not inf or nan)")
    return params


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a field name must not pass silently. Every float
    must be finite (inf/nan are refused)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Pose(_Strict):
    """A TCP pose in the robot base frame: position in mm, orientation as a rotation vector."""

    name: str = Field(min_length=1)
    position_mm: Vec3
    rotvec_rad: Vec3 = (math.pi, 0.0, 0.0)  # tool z pointing straight down

    def as_ur(self) -> list[float]:
        """[x, y, z, rx, ry, rz] in metres and radians, as ur_rtde expects."""
        return [v / 1000.0 for v in self.position_mm] + list(self.rotvec_rad)


class RobotConfig(_Strict):
    driver: Literal["auto", "sim", "ur_rtde"] = "auto"
    host: str = "127.0.0.1"
    tcp_offset_mm: Vec3 = (0.0, 0.0, 0.0)
    tcp_offset_rotvec_rad: Vec3 = (0.0, 0.0, 0.0)
    # ur_rtde's moveL limits: 3 m/s, 150 m/s²
    speed_mm_s: float = Field(250.0, gt=0, le=3000)
    acceleration_mm_s2: float = Field(1200.0, gt=0, le=150_000)
    settle_s: float = Field(0.15, ge=0, le=60)
    connect_timeout_s: TimeoutS = 5.0
    move_timeout_s: TimeoutS = 20.0
    home: Pose
    poses: list[Pose] = Field(min_length=1, max_length=100)

    @field_validator("poses")
    @classmethod
    def _unique_names(cls, poses: list[Pose]) -> list[Pose]:
        names = [p.name for p in poses]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pose names must be unique, repeated: {', '.join(dupes)}")
        return poses


class LensConfig(_Strict):
    """Optics used by the twin to project the sheet, and by the real camera's calibration."""

    focal_length_mm: float = Field(12.0, gt=0, le=1000)
    pixel_size_um: float = Field(3.45, gt=0, le=100)
    focus_distance_mm: float = Field(350.0, gt=0, le=100_000)
    f_number: float = Field(4.0, gt=0, le=64)


class CameraConfig(_Strict):
    driver: Literal["auto", "sim", "pylon"] = "auto"
    serial: str | None = None  # None: the first camera found
    pixel_format: Literal["Mono8", "RGB8", "BayerRG8"] = "Mono8"
    width: int = Field(640, ge=16, le=MAX_SENSOR_SIDE)
    height: int = Field(512, ge=16, le=MAX_SENSOR_SIDE)
    exposure_us: float = Field(8000.0, gt=0, le=MAX_EXPOSURE_US)
    gain_db: float = Field(0.0, ge=0, le=48)
    trigger: Literal["software", "hardware"] = "software"
    timeout_ms: int = Field(1000, gt=0, le=600_000)
    retries: int = Field(2, ge=0, le=20)
    feature_file: str | None = None  # pylon .pfs file applied before the recipe settings
    emulator_images: str | None = None  # pylon camera emulator only: image file or folder to play
    lens: LensConfig = LensConfig()

    @model_validator(mode="after")
    def _sensor_pixels(self) -> CameraConfig:
        if self.width * self.height > MAX_SENSOR_PIXELS:
            raise ValueError(
                f"width x height = {self.width} x {self.height} is more than "
                f"{MAX_SENSOR_PIXELS:,} pixels (64 Mpx, beyond any Basler area sensor)"
            )
        return self


class PreprocessConfig(_Strict):
    # x, y, width, height in camera pixels
    # (the recipe checks that the crop lies within camera.width x camera.height)
    crop: tuple[NonNegativeInt, NonNegativeInt, PositiveInt, PositiveInt] | None = None
    size: tuple[DetectorSide, DetectorSide] = (256, 256)  # width, height fed to the detectors
    grey_to_rgb: bool = True


class DetectorConfig(_Strict):
    name: str
    backbone: str = "efficientnet_lite0"
    weights: str = "auto"  # auto | package | cache | file:<path>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _finite(cls, params: dict[str, Any]) -> dict[str, Any]:
        return _finite_params(params)  # names and types: `station recipe check`

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in KNOWN_DETECTORS:
            raise ValueError(f"unknown detector {name!r}; known: {', '.join(KNOWN_DETECTORS)}")
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

    combine_poses: Literal["max", "mean"] = "max"
    combine_detectors: Literal["any", "all", "mean"] = "any"
    calibration_file: str | None = None  # default: calibration/<recipe>.yaml
    policy: Literal[
        "zero_miss", "false_reject_budget", "miss_budget", "youden", "f1", "good_quantile"
    ] = "zero_miss"
    false_reject_budget: float = Field(0.05, ge=0, le=1)
    miss_budget: float = Field(0.0, ge=0, le=1)
    # good_quantile only: threshold at this quantile of GOOD scores (no defect data behind it)
    good_quantile: float = Field(0.99, gt=0, lt=1)
    store_raw_maps: bool = False


class LineIOConfig(_Strict):
    driver: Literal["auto", "sim", "ur_rtde"] = "auto"
    reject_output: int = Field(0, ge=0, le=7)  # standard digital output on the UR control box
    part_present_input: int = Field(0, ge=0, le=7)
    confirm_timeout_s: TimeoutS = 0.5
    part_timeout_s: TimeoutS = 30.0
    # ur_rtde line I/O: standard digital output pulsed to let the conveyor move a sheet on
    # (None: the line does not wait for a release signal).
    release_output: int | None = Field(None, ge=0, le=7)
    release_pulse_s: TimeoutS = 0.2
    # The line contract (README "Line contract"); None switches a signal off.
    # Toggled every heartbeat_period_s while the station inspects; still when it dies or hangs.
    heartbeat_output: int | None = Field(1, ge=0, le=7)
    heartbeat_period_s: TimeoutS = 0.25
    # Low from a sheet's arrival until its verdict and reject output are set and read back.
    result_valid_output: int | None = Field(2, ge=0, le=7)
    # RTDE input int register (ur_rtde's IO range 18-22): the station's sheet number, written
    # before RESULT_VALID rises.
    part_id_register: int | None = Field(18, ge=18, le=22)
    # The PLC's side: the longest it waits for RESULT_VALID after presenting a sheet, and for
    # a heartbeat toggle, before it rejects the sheet.
    result_timeout_s: TimeoutS = 30.0
    heartbeat_timeout_s: TimeoutS = 1.0

    @model_validator(mode="after")
    def _distinct_outputs(self) -> LineIOConfig:
        used: dict[int, str] = {}
        for name in ("reject_output", "release_output", "heartbeat_output", "result_valid_output"):
            out = getattr(self, name)
            if out is None:
                continue
            if out in used:
                raise ValueError(f"{name} and {used[out]} are both DO{out}; give each its own")
            used[out] = name
        if self.heartbeat_output is not None and (
            self.heartbeat_timeout_s < 2 * self.heartbeat_period_s
        ):
            raise ValueError(
                f"heartbeat_timeout_s ({self.heartbeat_timeout_s:g}) must be at least twice "
                f"heartbeat_period_s ({self.heartbeat_period_s:g})"
            )
        return self


class StorageConfig(_Strict):
    database_url: str = "sqlite:///data/station.db"
    data_dir: str = "data"
    # where held part records go (None: <data>/<recipe>/journal); best on another disk
    journal_dir: str | None = None
    # space kept free for the journal, given back to it when its disk is full
    journal_reserve_mb: float = Field(1.0, ge=0.0, le=1024.0)

    def resolved_database_url(self) -> str:
        """SQLite paths made absolute against the station home; other URLs untouched."""
        prefix = "sqlite:///"
        url = self.database_url
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix:
            rel = url[len(prefix) :]
            if rel != ":memory:":
                return prefix + str(resolve(rel))
        return url


class TwinConfig(_Strict):
    """Digital twin settings, used when a driver is `sim`."""

    seed: int = Field(0, ge=0, le=2**32 - 1)
    sheet_width_mm: float = Field(300.0, ge=1, le=5000)
    sheet_height_mm: float = Field(300.0, ge=1, le=5000)
    sheet_center_mm: tuple[float, float] = (400.0, 0.0)  # in the robot base frame, on z = 0
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
    robot: RobotConfig
    camera: CameraConfig = CameraConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    detectors: list[DetectorConfig] = Field(min_length=1)
    decision: DecisionConfig = DecisionConfig()
    line_io: LineIOConfig = LineIOConfig()
    storage: StorageConfig = StorageConfig()
    twin: TwinConfig = TwinConfig()

    # Where the recipe was read from and its content hash (not part of the YAML).
    source: str = Field("", exclude=True)
    sha256: str = Field("", exclude=True)

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

    # -- drivers: `auto` follows the recipe's backend ------------------------------------
    @property
    def robot_driver(self) -> str:
        d = self.robot.driver
        return d if d != "auto" else ("sim" if self.backend == "sim" else "ur_rtde")

    @property
    def camera_driver(self) -> str:
        d = self.camera.driver
        return d if d != "auto" else ("sim" if self.backend == "sim" else "pylon")

    @property
    def line_driver(self) -> str:
        d = self.line_io.driver
        return d if d != "auto" else ("sim" if self.backend == "sim" else "ur_rtde")

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


def _field_ranges(ann: Any, meta: list[Any], path: str, out: dict[str, str]) -> dict[str, str]:
    """`out` filled with the allowed range of every bounded number in `ann`, by field path
    (list items as `*`), e.g. {"camera.width": "at least 16 and at most 16384"}."""
    if get_origin(ann) is Annotated:
        ann, *more = get_args(ann)
        meta = [*meta, *(m for f in more for m in getattr(f, "metadata", [f]))]
    words = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
    text = [f"{w} {getattr(m, k)}" for m in meta for k, w in words.items() if hasattr(m, k)]
    if text:
        out[path] = " and ".join(text)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        for name, info in ann.model_fields.items():
            _field_ranges(info.annotation, info.metadata, f"{path}.{name}".lstrip("."), out)
    elif get_origin(ann) is list:
        _field_ranges(get_args(ann)[0], [], f"{path}.*", out)
    elif get_origin(ann) is tuple:
        for i, item in enumerate(get_args(ann)):
            _field_ranges(item, [], f"{path}.{i}", out)
    else:
        for item in get_args(ann):  # X | None
            _field_ranges(item, [], path, out)
    return out


_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _format_error(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind in _BOUND_ERRORS:
        ranges = _field_ranges(Recipe, [], "", {})
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
    relative one from the current folder when the file is there, else from the station home)."""
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") and p.is_file():
        path = p.resolve()
    elif p.suffix in (".yaml", ".yml") or p.exists():
        path = resolve(p)
    else:
        path = station_home() / "recipes" / f"{name_or_path}.yaml"
    if not path.is_file():
        raise RecipeError(
            str(path),
            [f"file not found; give a recipe name from {station_home() / 'recipes'} or a path"],
        )
    return path


class _TooLarge(yaml.YAMLError):
    pass


def _tree_size(root: yaml.Node) -> tuple[int, int]:
    """(values, depth) of the document with every alias expanded, counted once per node so that
    a bomb is measured without being built. A self-referencing alias counts as too large."""
    too_big = (MAX_YAML_VALUES + 1, MAX_YAML_DEPTH + 1)
    sizes: dict[int, tuple[int, int]] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, closing = stack.pop()
        if isinstance(node, yaml.MappingNode):
            kids = [n for pair in node.value for n in pair]
        else:
            kids = node.value if isinstance(node, yaml.SequenceNode) else []
        if closing:
            open_.discard(id(node))
            values = 1 + sum(sizes[id(k)][0] for k in kids)
            depth = 1 + max((sizes[id(k)][1] for k in kids), default=0)
            sizes[id(node)] = (min(values, too_big[0]), depth)
        elif id(node) in open_:
            return too_big
        elif id(node) not in sizes:
            if len(sizes) + len(open_) >= MAX_YAML_VALUES:  # too many distinct nodes already
                return too_big
            open_.add(id(node))
            stack.append((node, True))
            stack.extend((k, False) for k in kids)
    return sizes[id(root)]


class _RecipeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML that refuses a key given twice in one mapping, and alias bombs."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        values, depth = _tree_size(node)
        if values > MAX_YAML_VALUES:
            raise _TooLarge(
                f"more than {MAX_YAML_VALUES:,} values, counting each alias (*name) expanded"
            )
        if depth > MAX_YAML_DEPTH:
            raise _TooLarge(f"nested more than {MAX_YAML_DEPTH} levels deep")
        return self.construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` keys may be overridden: that is what merging is for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} is given twice (lines {first[key]} and {line}); keep one",
                        key_node.start_mark,
                    )
                first[key] = line
            except TypeError:  # unhashable key: the base class says so
                pass
        return super().construct_mapping(node, deep=deep)


def _check_size(source: str, size: int) -> None:
    if size > MAX_RECIPE_BYTES:
        raise RecipeError(
            source,
            [f"file is {size:,} bytes; a recipe may be at most {MAX_RECIPE_BYTES:,} bytes (1 MiB)"],
        )


def _read_mapping(text: str, source: str) -> dict[str, Any]:
    _check_size(source, len(text.encode("utf-8", "replace")))
    try:
        data = yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 (a safe loader)
    except _TooLarge as exc:
        raise RecipeError(source, [f"(top level): {exc}; far more than a recipe needs"]) from None
    except RecursionError:  # the pure-Python parser, without libyaml
        raise RecipeError(source, ["(top level): nested too deeply"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(source, [f"{where}not valid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise RecipeError(source, ["(top level): expected a mapping of recipe fields"])
    return data


def _overlay(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _overlay(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_extends(
    data: dict[str, Any], source: str, seen: tuple[str, ...]
) -> tuple[dict[str, Any], list[str]]:
    """The recipe's fields with its `extends:` chain applied, and the texts of the bases."""
    base_name = data.pop("extends", None)
    if base_name is None:
        return data, []
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
    base_text = _read_text(base_path)
    base, texts = _resolve_extends(
        _read_mapping(base_text, str(base_path)), str(base_path), (*seen, key)
    )
    return _overlay(base, data), [*texts, base_text]


def parse_recipe(text: str, source: str = "<string>") -> Recipe:
    """A validated recipe from YAML text. `extends: <recipe>` starts from another recipe's
    fields: nested sections merge key by key, lists (poses, detectors) are replaced whole."""
    seen = (str(Path(source).resolve()),) if Path(source).is_file() else ()
    data, base_texts = _resolve_extends(_read_mapping(text, source), source, seen)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, [_format_error(e) for e in exc.errors()]) from None
    # The effective recipe changes when a base does: the digest covers the whole chain.
    digest = hashlib.sha256("\0".join([*base_texts, text]).encode()).hexdigest()
    return recipe.model_copy(update={"source": source, "sha256": digest})


def _read_text(path: Path) -> str:
    try:
        _check_size(str(path), path.stat().st_size)  # before reading: a huge file is refused
        with path.open("rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)  # the file may have grown since
        _check_size(str(path), len(data))
        return data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text
    except UnicodeDecodeError:
        raise RecipeError(str(path), ["not a UTF-8 text file (a YAML recipe is text)"]) from None
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from None


def load_recipe(name_or_path: str) -> Recipe:
    path = find_recipe(name_or_path)
    return parse_recipe(_read_text(path), str(path))
