"""Basler camera driver on pypylon, implementing `station.interfaces.Camera`.

`PylonCamera(camera_cfg)` opens a camera by serial number (or the only one found; an emulated
camera only for a recipe that plays `camera.emulator_images` or names its serial), loads the
recipe's pylon feature file (.pfs), refuses binning, decimation or mirroring that it sets (the
station's geometry assumes none), then applies the recipe settings (pixel format, size, exposure,
gain, software trigger) and reads them back. `grab()` executes a software trigger, retries on
timeouts and failed buffers, and returns a `Frame`: HxW uint8 for Mono8, HxWx3 uint8 for RGB8 and
BayerRG8 (demosaiced by pylon).

A frame that comes later than `camera.timeout_ms` must never answer a later try or grab (it was
exposed at an earlier pose). The driver counts its software triggers since StartGrabbing and
matches each result's BlockID to them (the emulator and USB3 cameras number frames from 0,
GigE cameras from 1, wrapping at 65535): results of earlier triggers are dropped, and a sequence
it cannot trust (a wrap, a block newer than the last trigger) fails that try and is learned again
from a frame that comes while one trigger is outstanding. This assumes a camera that is ready for
a trigger (WaitForFrameTriggerReady) answers it: a trigger it ignored would make every later
frame look stale, and grabs fail until the camera is opened again.

Grabbing starts in `open()` and keeps running until `close()`: settings that change the image
layout cannot be written while grabbing, and the pylon camera emulator rewinds its image folder
at every StartGrabbing, so stopping between grabs would replay the first file forever.

The pylon camera emulator (`PYLON_CAMEMU=N` makes N emulated cameras appear) plays the
recipe's `camera.emulator_images` (one image file, or a folder played in alphabetical order,
one file per trigger). Every file in that folder must be an image: the emulator turns anything
else into a failed buffer. A failed buffer or retry consumes a file, so the next try gets the
next image, as a real camera's next exposure would. Exposure and gain do not change emulated
pixels.

pylon implements its wait timeouts with POSIX timers that signal SIGALRM to a handler it installs
on first use. Anything else that takes SIGALRM in the same process (signal.alarm, pytest-timeout's
default "signal" method) breaks them: RetrieveResult then waits forever. Use thread-based
timeouts in processes that grab (pytest: `@pytest.mark.timeout(..., method="thread")`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from station.errors import CameraError
from station.interfaces import Frame
from station.paths import resolve
from station.recipe.devices import PylonCameraConfig

log = logging.getLogger(__name__)

EMULATOR_CLASS = "BaslerCamEmu"
# Files the pylon camera emulator can play (it reads them by extension).
EMULATOR_IMAGE_SUFFIXES = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".raw")
# Recipe pixel format -> node values to try (SFNC 2 name first, then the older "Packed" name
# that GigE cameras and the emulator use).
_PIXEL_FORMATS = {
    "Mono8": ("Mono8",),
    "RGB8": ("RGB8", "RGB8Packed"),
    "BayerRG8": ("BayerRG8",),
}
_NO_CAMERA_HINT = (
    "check power, cable and (GigE) IP settings with the pylon Viewer; to use the pylon camera "
    "emulator set PYLON_CAMEMU=1 and camera.emulator_images"
)
# Features that change which sensor pixel lands where, with their neutral values: the station's
# geometry (sheet map, coverage, mm/px, calibration) assumes none of them.
_GEOMETRY = {
    "BinningHorizontal": 1,
    "BinningVertical": 1,
    "DecimationHorizontal": 1,
    "DecimationVertical": 1,
    "ReverseX": False,
    "ReverseY": False,
}
# GetBlockID's invalid block (pylon): such results, and blocks 0 after a stream's first result
# (a camera that numbers none), are matched to triggers by their order.
_NO_BLOCK_ID = 2**64 - 1


def _pylon() -> Any:
    """The pypylon module, imported on first use (it loads the pylon runtime)."""
    try:
        from pypylon import pylon
    except ImportError as exc:  # pragma: no cover - pypylon is a dependency
        raise CameraError(
            f"pypylon is not importable ({exc})", hint="pip install pypylon"
        ) from None
    return pylon


def _genicam_error() -> type[Exception]:
    from pypylon import genicam

    return genicam.GenericException


def _short(exc: BaseException) -> str:
    """pylon's exception text without its ' : XException thrown (file ..., line ...)' tail."""
    text = str(exc).strip()
    for marker in (" : ", "Exception thrown"):
        if marker in text:
            text = text.split(marker, 1)[0].strip()
    return text.rstrip(".") or type(exc).__name__


def list_cameras() -> list[dict[str, str]]:
    """The cameras pylon sees now: serial, model, device class and friendly name each."""
    pylon = _pylon()
    devices = pylon.TlFactory.GetInstance().EnumerateDevices()
    return [
        {
            "serial": d.GetSerialNumber(),
            "model": d.GetModelName(),
            "device_class": d.GetDeviceClass(),
            "name": d.GetFriendlyName(),
        }
        for d in devices
    ]


class PylonCamera:
    """One Basler camera (or pylon emulated camera) configured from a recipe's `camera` block."""

    def __init__(self, camera_cfg: PylonCameraConfig) -> None:
        self.cfg = camera_cfg
        self._cam: Any = None
        self._info: dict[str, str] = {}
        self._settings: dict[str, Any] = {}
        self._converter: Any = None
        self._lock = threading.Lock()
        # software triggers since StartGrabbing, how many of them a result answered (or skipped),
        # and the BlockID of trigger 0 (None: not known, learned from the next lone frame)
        self._triggers = self._answered = 0
        self._block0: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> PylonCamera:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        return self._cam is not None

    @property
    def is_emulator(self) -> bool:
        return self._info.get("device_class") == EMULATOR_CLASS

    @property
    def device(self) -> Any:
        """The open `pylon.InstantCamera`, for features the recipe does not cover.

        Do not change the image layout (size, pixel format) on it: grabbing is running. Do not
        trigger it: `grab()` matches frames to its own triggers.
        """
        self._require_open()
        return self._cam

    def open(self) -> None:
        """Find, open and configure the camera, then start grabbing (idempotent)."""
        if self._cam is not None:
            return
        pylon = _pylon()
        generic = _genicam_error()
        if callable(signal.getsignal(signal.SIGALRM)):
            log.warning(
                "a Python SIGALRM handler is installed: it breaks pylon's grab timeouts "
                "(use thread-based timeouts, not signal.alarm)"
            )
        device = self._find_device(pylon)
        self._info = {
            "serial": device.GetSerialNumber(),
            "model": device.GetModelName(),
            "device_class": device.GetDeviceClass(),
        }
        label = self._label()
        try:
            cam = pylon.InstantCamera(pylon.TlFactory.GetInstance().CreateDevice(device))
            cam.Open()
        except generic as exc:
            raise CameraError(
                f"{label} could not be opened: {_short(exc)}",
                hint="close the pylon Viewer or any other program using this camera",
            ) from None
        self._cam = cam
        try:
            self._configure(pylon)
            self._settings = self._read_settings()
            cam.MaxNumBuffer.Value = 5
            self._triggers = self._answered = 0
            self._block0 = None
            cam.StartGrabbing(pylon.GrabStrategy_OneByOne)
        except CameraError:
            self.close()
            raise
        except generic as exc:
            self.close()
            raise CameraError(f"{label} could not be configured: {_short(exc)}") from None
        log.info("opened %s: %s", label, self._settings)

    def close(self) -> None:
        """Stop grabbing and release the camera; safe to call twice."""
        cam, self._cam = self._cam, None
        if cam is None:
            return
        generic = _genicam_error()
        for step in (cam.StopGrabbing, cam.Close, cam.DestroyDevice):
            try:
                step()
            except generic as exc:  # the camera may already be gone; nothing left to do
                log.warning("closing %s: %s", self._label(), _short(exc))

    # -- Camera protocol ---------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The settings read back from the device after configuration."""
        self._require_open()
        return dict(self._settings)

    def grab(self) -> Frame:
        """One frame, from a software trigger, with `1 + retries` tries."""
        self._require_open()
        with self._lock:
            return self._grab()

    # -- feature files -----------------------------------------------------------------------
    def save_features(self, path: str | Path) -> Path:
        """Write the device's current settings to a pylon .pfs file; returns its path.

        Load it again through the recipe's `camera.feature_file` (or the pylon Viewer).
        """
        self._require_open()
        target = resolve(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            _pylon().FeaturePersistence.Save(str(target), self._cam.GetNodeMap())
        except _genicam_error() as exc:
            raise CameraError(f"cannot save camera features to {target}: {_short(exc)}") from None
        return target

    # -- internals ---------------------------------------------------------------------------
    def _label(self) -> str:
        serial = self._info.get("serial") or self.cfg.serial or "?"
        model = self._info.get("model")
        return f"camera {serial}" + (f" ({model})" if model else "")

    def _require_open(self) -> None:
        if self._cam is None:
            raise CameraError("the pylon camera is not open", hint="check the camera, then resume")

    def _find_device(self, pylon: Any) -> Any:
        try:
            devices = list(pylon.TlFactory.GetInstance().EnumerateDevices())
        except _genicam_error() as exc:
            raise CameraError(f"pylon could not list cameras: {_short(exc)}") from None
        if not devices:
            raise CameraError("no Basler camera found", hint=_NO_CAMERA_HINT)
        found = ", ".join(
            f"{d.GetSerialNumber()} ({d.GetModelName()}"
            + (", emulated)" if d.GetDeviceClass() == EMULATOR_CLASS else ")")
            for d in devices
        )
        if self.cfg.serial is not None:
            for d in devices:
                if d.GetSerialNumber() == self.cfg.serial:
                    return d  # a serial may name an emulated camera
            raise CameraError(
                f"camera serial {self.cfg.serial} not found; cameras found: {found}",
                hint="fix camera.serial in the recipe",
            )
        if len(devices) > 1:
            raise CameraError(
                f"{len(devices)} cameras found ({found}) and camera.serial is null",
                hint="set camera.serial in the recipe to the camera's serial number",
            )
        if devices[0].GetDeviceClass() == EMULATOR_CLASS and not self.cfg.emulator_images:
            raise CameraError(
                f"an emulated camera ({found}) was found (PYLON_CAMEMU set?) and no real one",
                hint="unset PYLON_CAMEMU and connect the camera; to use the emulator set "
                "camera.emulator_images or name its serial in camera.serial",
            )
        return devices[0]

    def _configure(self, pylon: Any) -> None:
        cfg = self.cfg
        feature_file = resolve(cfg.feature_file) if cfg.feature_file else None
        if feature_file:
            self._load_feature_file(pylon, feature_file)
        self._plain_geometry(feature_file)  # before the size: binning changes its range
        # Recipe settings win over the feature file.
        self._set_enum("PixelFormat", _PIXEL_FORMATS[cfg.pixel_format], "camera.pixel_format")
        self._set_int("Width", cfg.width, "camera.width")
        self._set_int("Height", cfg.height, "camera.height")
        for auto in ("ExposureAuto", "GainAuto"):  # fixed values, as the recipe says
            if self._has(auto):
                self._set_enum(auto, ("Off",), auto)
        if self._has("ExposureMode"):
            self._set_enum("ExposureMode", ("Timed",), "ExposureMode")
        exposure = "ExposureTime" if self._has("ExposureTime") else "ExposureTimeAbs"
        self._set_float(exposure, cfg.exposure_us, "camera.exposure_us")
        gain = "Gain" if self._has("Gain") else "GainAbs"
        if self._has(gain):
            self._set_float(gain, cfg.gain_db, "camera.gain_db")
        elif cfg.gain_db != 0:
            raise CameraError(
                f"{self._label()} has no gain in dB (Gain/GainAbs) to set camera.gain_db",
                hint="set camera.gain_db: 0 and the raw gain in a feature file",
            )
        if self._has("AcquisitionMode"):
            self._set_enum("AcquisitionMode", ("Continuous",), "AcquisitionMode")
        if self._has("TriggerSelector"):
            self._set_enum("TriggerSelector", ("FrameStart",), "TriggerSelector")
        self._set_enum("TriggerMode", ("On",), "TriggerMode")
        self._set_enum("TriggerSource", ("Software",), "camera.trigger")
        if cfg.emulator_images:
            if self.is_emulator:
                self._feed_emulator(resolve(cfg.emulator_images))
            else:
                log.warning(
                    "%s is not an emulated camera: camera.emulator_images ignored", self._label()
                )
        if cfg.pixel_format == "BayerRG8":
            self._converter = pylon.ImageFormatConverter()
            self._converter.OutputPixelFormat = pylon.PixelType_RGB8packed

    def _load_feature_file(self, pylon: Any, path: Path) -> None:
        if not path.is_file():
            raise CameraError(
                f"camera feature file {path} not found",
                hint="fix camera.feature_file in the recipe, or save one with save_features()",
            )
        try:
            pylon.FeaturePersistence.Load(str(path), self._cam.GetNodeMap(), True)
        except _genicam_error() as exc:
            raise CameraError(
                f"camera feature file {path} could not be applied to {self._label()}: "
                f"{_short(exc)}",
                hint="save a fresh .pfs from this camera model (pylon Viewer or save_features)",
            ) from None

    def _plain_geometry(self, feature_file: Path | None) -> None:
        """Refuse binning, decimation or mirroring that the feature file sets; reset what the
        camera kept from earlier use. The station's geometry assumes none of them."""
        from pypylon import genicam

        listed: set[str] = set()
        if feature_file:  # pfs lines: name, [selector,] value, tab-separated; '#' comments
            lines = feature_file.read_text(encoding="utf-8", errors="replace").splitlines()
            listed = {ln.split("\t", 1)[0].strip() for ln in lines if not ln.startswith("#")}
        for name, neutral in _GEOMETRY.items():
            if not self._has(name) or (value := getattr(self._cam, name).Value) == neutral:
                continue
            if name in listed:
                raise CameraError(
                    f"camera feature file {feature_file} sets {name} {value:d}; the station's "
                    "geometry (sheet map, coverage, mm/px, calibration) assumes "
                    f"{name} {neutral:d}",
                    hint=f"remove {name} from the feature file, or set it to {neutral:d} there",
                )
            if not genicam.IsWritable(self._cam.GetNodeMap().GetNode(name)):
                raise CameraError(
                    f"{self._label()} has {name} {value:d} and it cannot be reset to {neutral:d}",
                    hint="reset it in the pylon Viewer, or load the camera's default user set",
                )
            log.warning(
                "%s: %s was %d (left from earlier use); reset to %d",
                self._label(), name, value, neutral,
            )
            getattr(self._cam, name).Value = neutral

    def _feed_emulator(self, source: Path) -> None:
        if source.is_dir():
            files = sorted(p for p in source.iterdir() if not p.name.startswith("."))
            images = [p for p in files if p.suffix.lower() in EMULATOR_IMAGE_SUFFIXES]
            others = [p.name for p in files if p not in images]
            if others:
                raise CameraError(
                    f"emulator image folder {source} holds non-image files "
                    f"({', '.join(others[:5])}); the emulator would play them as failed buffers",
                    hint="keep only image files in camera.emulator_images",
                )
            if not images:
                raise CameraError(
                    f"emulator image folder {source} has no images",
                    hint="fill it first, e.g. with "
                    "station.devices.pylon_emulator.prepare_twin_images",
                )
        elif not source.is_file():
            raise CameraError(
                f"emulator images {source} not found",
                hint="fix camera.emulator_images (an image file or a folder of images)",
            )
        self._set_enum("TestImageSelector", ("Off",), "TestImageSelector")
        self._set_enum("ImageFileMode", ("On",), "ImageFileMode")
        self._cam.ImageFilename.Value = str(source)

    # Node access with one-line errors that name the recipe field.
    def _has(self, name: str) -> bool:
        node = self._cam.GetNodeMap().GetNode(name)
        if node is None:
            return False
        from pypylon import genicam

        return bool(genicam.IsAvailable(node))

    def _node(self, name: str, field: str) -> Any:
        if not self._has(name):
            raise CameraError(
                f"{self._label()} has no {name} feature (needed for {field})",
                hint="this camera model does not support that setting",
            )
        return getattr(self._cam, name)

    def _set_enum(self, name: str, choices: tuple[str, ...], field: str) -> None:
        node = self._node(name, field)
        available = node.Symbolics
        for value in choices:
            if value in available:
                node.Value = value
                return
        raise CameraError(
            f"{self._label()} does not support {name} {choices[0]} ({field}); "
            f"it offers: {', '.join(available)}"
        )

    def _set_int(self, name: str, value: int, field: str) -> None:
        node = self._node(name, field)
        lo, hi, inc = node.Min, node.Max, max(1, node.Inc)
        if name in ("Width", "Height"):  # the offset limits the size: move the ROI home first
            offset = "OffsetX" if name == "Width" else "OffsetY"
            if self._has(offset) and value + getattr(self._cam, offset).Value > hi:
                getattr(self._cam, offset).Value = 0
                hi = node.Max
        if not lo <= value <= hi or (value - lo) % inc:
            raise CameraError(
                f"{field} = {value} is not valid for {self._label()}: "
                f"{name} takes {lo}..{hi} in steps of {inc}"
            )
        node.Value = value

    def _set_float(self, name: str, value: float, field: str) -> None:
        node = self._node(name, field)
        lo, hi = node.Min, node.Max
        if not lo <= value <= hi:
            raise CameraError(
                f"{field} = {value:g} is out of range for {self._label()}: "
                f"{name} takes {lo:g}..{hi:g}"
            )
        node.Value = value

    def _read(self, *names: str) -> Any:
        for name in names:
            if self._has(name):
                return getattr(self._cam, name).Value
        return None

    def _read_settings(self) -> dict[str, Any]:
        exposure = self._read("ExposureTime", "ExposureTimeAbs")
        gain = self._read("Gain", "GainAbs")
        settings: dict[str, Any] = {
            "serial": self._info["serial"],
            "model": self._info["model"],
            "device_class": self._info["device_class"],
            "emulator": self.is_emulator,
            "pixel_format": self._read("PixelFormat"),
            "width": int(self._read("Width")),
            "height": int(self._read("Height")),
            "offset_x": self._read("OffsetX"),
            "offset_y": self._read("OffsetY"),
            "exposure_us": None if exposure is None else float(exposure),
            "gain_db": None if gain is None else float(gain),
            "trigger_mode": self._read("TriggerMode"),
            "trigger_source": self._read("TriggerSource"),
        }
        for name in _GEOMETRY:  # all neutral (_plain_geometry); recorded where the camera has them
            if self._has(name):
                key = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
                settings[key] = self._read(name)
        if self.is_emulator and self._read("ImageFileMode") == "On":
            settings["emulator_images"] = self._read("ImageFilename")
        return settings

    def _grab(self) -> Frame:
        pylon = _pylon()
        generic = _genicam_error()
        cam, cfg = self._cam, self.cfg
        tries = cfg.retries + 1
        problems: list[str] = []
        for attempt in range(1, tries + 1):
            try:
                if not cam.WaitForFrameTriggerReady(cfg.timeout_ms, pylon.TimeoutHandling_Return):
                    problems.append(f"not ready for a trigger within {cfg.timeout_ms} ms")
                    continue
                # drop what is queued (late frames, landed while the camera got ready)
                self._own_result(pylon, 0.0, self._triggers)
                cam.ExecuteSoftwareTrigger()
                # counted once executed: a count ahead of the camera's makes every frame stale
                self._triggers += 1
                deadline = time.monotonic() + cfg.timeout_ms / 1e3
                result, problem = self._own_result(pylon, deadline, self._triggers - 1)
            except generic as exc:
                if cam.IsCameraDeviceRemoved():
                    raise CameraError(
                        f"{self._label()} was disconnected", hint="check its cable and power"
                    ) from None
                problems.append(_short(exc))
                continue
            if result is None:
                problems.append(problem or "no frame")
                continue
            try:
                if not result.GrabSucceeded():
                    code = result.GetErrorCode()
                    problems.append(
                        f"failed buffer (error 0x{code & 0xFFFFFFFF:08X}: "
                        f"{result.GetErrorDescription().strip()})"
                    )
                    continue
                image = self._to_array(result)
                extra = {
                    "attempts": attempt,
                    "block_id": int(result.GetBlockID()),
                    "device_timestamp": int(result.GetTimeStamp()),
                }
            except generic as exc:  # conversion or chunk data: a camera fault, retried
                problems.append(_short(exc))
                continue
            finally:
                result.Release()
            if attempt > 1:
                log.warning("%s: frame after %d tries (%s)", self._label(), attempt, problems)
            return Frame(
                image=image,
                timestamp_s=time.time(),
                camera_settings={**self._settings, **extra},
            )
        raise CameraError(
            f"{self._label()}: no image after {tries} tr{'y' if tries == 1 else 'ies'}: "
            + "; ".join(dict.fromkeys(problems)),
            hint="check the camera cable and bandwidth, or raise camera.timeout_ms / retries",
        )

    def _own_result(self, pylon: Any, deadline: float, want: int) -> tuple[Any, str | None]:
        """The result (a frame or a failed buffer) answering software trigger `want`, or None
        and why not. Results of earlier triggers (late frames) are dropped."""
        while True:
            left_ms = max(0, round((deadline - time.monotonic()) * 1e3))
            result = self._cam.RetrieveResult(left_ms, pylon.TimeoutHandling_Return)
            if not result.IsValid():
                return None, f"no frame within {self.cfg.timeout_ms} ms"
            block = int(result.GetBlockID())
            answers = self._trigger_of(block)
            if answers == want:
                return result, None
            result.Release()
            if answers is None:  # a wrap, or a frame no trigger of ours asked for
                log.warning("%s: dropped a frame out of sequence (block %d)", self._label(), block)
                return None, f"frame sequence lost at block {block}; learning it again"
            log.warning(
                "%s: dropped a stale frame (block %d, expected %d)",
                self._label(), block, block + want - answers,
            )

    def _trigger_of(self, block: int) -> int | None:
        """Which software trigger since StartGrabbing (0-based) a result with this BlockID
        answers; None when the sequence cannot be trusted (a wrap, a block newer than the last
        trigger): the offset is then learned again from a result that comes while one trigger
        is outstanding (results come in trigger order)."""
        numbered = block != _NO_BLOCK_ID and (block > 0 or self._answered == 0)
        if self._block0 is not None and numbered:
            k = block - self._block0
            if self._answered <= k < self._triggers:
                self._answered = k + 1  # blocks skipped before it: those frames were lost
                return k
            self._block0 = None
            self._answered = min(self._answered + 1, self._triggers)
            return None
        k = self._answered
        if k >= self._triggers:  # a frame no trigger of ours asked for
            return None
        self._answered += 1
        if k == self._triggers - 1 and numbered:
            self._block0 = block - k
        return k

    def _to_array(self, result: Any) -> np.ndarray:
        if self._converter is not None:
            return np.array(self._converter.Convert(result).GetArray(), dtype=np.uint8)
        image = np.array(result.GetArray(), dtype=np.uint8)
        if image.ndim == 3 and image.shape[2] != 3:  # pragma: no cover - formats are fixed
            raise CameraError(f"{self._label()}: unexpected image shape {image.shape}")
        return image
