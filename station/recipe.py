"""Recipe schema and loader: the one place that knows the recipe YAML.

A recipe describes one product: robot poses, camera settings, preprocessing, detectors, the
decision rule, line I/O, storage and (for the simulated station) the digital twin. Units are in
the field names: millimetres and rotation vectors in radians for poses, as on the UR pendant.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Annotated, Any, Literal

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


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a field name must not pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


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
    speed_mm_s: PositiveFloat = 250.0
    acceleration_mm_s2: PositiveFloat = 1200.0
    settle_s: float = Field(0.15, ge=0)
    connect_timeout_s: PositiveFloat = 5.0
    move_timeout_s: PositiveFloat = 20.0
    home: Pose
    poses: list[Pose] = Field(min_length=1)

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

    focal_length_mm: PositiveFloat = 12.0
    pixel_size_um: PositiveFloat = 3.45
    focus_distance_mm: PositiveFloat = 350.0
    f_number: PositiveFloat = 4.0


class CameraConfig(_Strict):
    driver: Literal["auto", "sim", "pylon"] = "auto"
    serial: str | None = None  # None: the first camera found
    pixel_format: Literal["Mono8", "RGB8", "BayerRG8"] = "Mono8"
    width: int = Field(640, ge=16)
    height: int = Field(512, ge=16)
    exposure_us: PositiveFloat = 8000.0
    gain_db: float = Field(0.0, ge=0, le=48)
    trigger: Literal["software", "hardware"] = "software"
    timeout_ms: int = Field(1000, gt=0)
    retries: int = Field(2, ge=0)
    feature_file: str | None = None  # pylon .pfs file applied before the recipe settings
    emulator_images: str | None = None  # pylon camera emulator only: image file or folder to play
    lens: LensConfig = LensConfig()


class PreprocessConfig(_Strict):
    # x, y, width, height in camera pixels
    crop: tuple[NonNegativeInt, NonNegativeInt, PositiveInt, PositiveInt] | None = None
    size: tuple[PositiveInt, PositiveInt] = (256, 256)  # width, height fed to the detectors
    grey_to_rgb: bool = True


class DetectorConfig(_Strict):
    name: str
    backbone: str = "efficientnet_lite0"
    weights: str = "auto"  # auto | package | cache | file:<path>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    params: dict[str, Any] = Field(default_factory=dict)

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
    confirm_timeout_s: PositiveFloat = 0.5
    part_timeout_s: PositiveFloat = 30.0
    # ur_rtde line I/O: standard digital output pulsed to let the conveyor move a sheet on
    # (None: the line does not wait for a release signal).
    release_output: int | None = Field(None, ge=0, le=7)
    release_pulse_s: PositiveFloat = 0.2


class StorageConfig(_Strict):
    database_url: str = "sqlite:///data/station.db"
    data_dir: str = "data"

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

    seed: int = 0
    sheet_width_mm: PositiveFloat = 300.0
    sheet_height_mm: PositiveFloat = 300.0
    sheet_center_mm: tuple[float, float] = (400.0, 0.0)  # in the robot base frame, on z = 0
    weave: Literal["plain", "twill", "mixed"] = "plain"
    roving_pitch_mm: PositiveFloat = 2.5
    defect_rate: float = Field(0.3, ge=0, le=1)  # fraction of parts with at least one defect
    defect_kinds: dict[str, float] = Field(default_factory=dict)  # kind -> weight; {} = all
    defect_size_mm: tuple[PositiveFloat, PositiveFloat] = (3.0, 25.0)
    time_scale: float = Field(1.0, ge=0)  # 0: no waiting, 1: real time
    params: dict[str, Any] = Field(default_factory=dict)


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


def _format_error(err: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown field (typo?)"
    if kind == "missing":
        return f"{where}: required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
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


def _read_mapping(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
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
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(str(path), ["not a UTF-8 text file (a YAML recipe is text)"]) from None
    except OSError as exc:
        raise RecipeError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from None


def load_recipe(name_or_path: str) -> Recipe:
    path = find_recipe(name_or_path)
    return parse_recipe(_read_text(path), str(path))
