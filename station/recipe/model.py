"""The recipe's fields: one product's robot poses, camera, preprocessing, detectors, decision
rule, line I/O, storage and (for the simulated station) digital twin, validated by pydantic.

Units are in the field names: millimetres and rotation vectors in radians for poses, as on the
UR pendant. The device sections (one typed config per driver) are in `station.recipe.devices`,
the monitoring sections in `station.recipe.quality`, the shared building blocks in
`station.recipe.base`; reading a recipe file is `station.recipe.load`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from station.paths import resolve
from station.recipe.base import DatabaseUrl, Strict, finite_params, is_number
from station.recipe.devices import CAMERA, LINE_IO, MAX_TWIN_SIDE, ROBOT, pick_drivers
from station.recipe.quality import MonitoringConfig, RetrainConfig, card_problem

# The device sections: each driver's config, chosen by `driver` (see station.recipe.devices).
RobotSettings = ROBOT.union()
CameraSettings = CAMERA.union()
LineIOSettings = LINE_IO.union()

MAX_DETECTOR_SIDE = 4096
DetectorSide = Annotated[int, Field(ge=1, le=MAX_DETECTOR_SIDE)]
DefectSize = Annotated[float, Field(gt=0, le=200)]


class TilingConfig(Strict):
    """Native-resolution tiles: the (cropped) shot is cut into `preprocess.size` tiles, not
    resized; the tiles' maps are stitched back into one full-resolution shot map."""

    enabled: bool = False
    overlap_px: NonNegativeInt = 32  # least overlap between neighbouring tiles
    # training: at most this many tiles per training image, drawn at random (None: all)
    train_tiles_per_image: PositiveInt | None = None


class PreprocessConfig(Strict):
    # x, y, width, height in camera pixels
    # (the recipe checks that the crop lies within camera.width x camera.height)
    crop: tuple[NonNegativeInt, NonNegativeInt, PositiveInt, PositiveInt] | None = None
    # width, height fed to the detectors: the whole shot resized to it, or the tile size
    size: tuple[DetectorSide, DetectorSide] = (256, 256)
    grey_to_rgb: bool = True
    tiling: TilingConfig = TilingConfig()


class SheetConfig(Strict):
    """The product on the table, square to the robot's base axes."""

    width_mm: float = Field(300.0, ge=1, le=5000)  # along base x
    height_mm: float = Field(300.0, ge=1, le=5000)  # along base y
    center_mm: tuple[float, float] = (400.0, 0.0)  # in the robot base frame, on the table z = 0
    # find the sheet's edges in every part's shots: a sheet reaching past the inspected region
    # (its place grown by coverage.edge_margin_mm) is faulted as misplaced; needs the table
    # beside the sheet to look unlike the sheet. Not with a partial region.
    check_placement: bool = True


class CoverageConfig(Strict):
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


class DetectorConfig(Strict):
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
        return finite_params(params)  # names and types: `station recipe check`

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


class DecisionConfig(Strict):
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


class StorageConfig(Strict):
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


class TwinConfig(Strict):
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
        params = finite_params(params)
        light = params.get("side_light_mm")
        if light is not None and not (
            isinstance(light, list | tuple)
            and len(light) == 3
            and all(is_number(v) for v in light)
            and light[2] > 0
        ):
            raise ValueError(f"side_light_mm must be [x, y, z] in mm, z above 0, not {light!r}")
        for key in (
            "reference_exposure_us",
            "line_transfer_s",
            "angular_speed_rad_s",
            "angular_acceleration_rad_s2",
        ):
            if key in params and not (is_number(params[key]) and params[key] > 0):
                raise ValueError(f"{key} must be a number above 0, not {params[key]!r}")
        return params


class Recipe(Strict):
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
        """A real line's verdicts must come from the real cell, not from the twin's images; and
        a real robot's sheets must have their verdicts heard by the real line."""
        if self.line_driver == "sim":
            if self.robot_driver != "sim":
                raise ValueError(
                    f"line_io.driver: sim with robot.driver {self.robot_driver}: the robot would "
                    "inspect real sheets whose verdicts no line hears, and sheets would be "
                    "announced by the twin; give line_io its real driver"
                )
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
