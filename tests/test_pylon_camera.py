"""PylonCamera against the real pylon camera emulator shipped in the pypylon wheel.

PYLON_CAMEMU is read at every enumeration, so each test sets it before opening a camera.
Emulated serials are 0815-0000, 0815-0001, ...; with two of them a camera is opened by serial.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from station.errors import CameraError, StationError
from station.interfaces import Camera
from station.recipe import PylonCameraConfig

pytest.importorskip("pypylon")

from station.hardware.pylon.camera import PylonCamera, list_cameras  # noqa: E402

# pylon times its waits with SIGALRM timers: a signal-based test timeout breaks them.
pytestmark = pytest.mark.timeout(60, method="thread")

W, H = 64, 48


@pytest.fixture(autouse=True)
def two_emulated_cameras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYLON_CAMEMU", "2")


def cfg(**overrides: object) -> PylonCameraConfig:
    base: dict[str, object] = {
        "driver": "pylon", "serial": "0815-0000", "width": W, "height": H, "timeout_ms": 1000
    }
    return PylonCameraConfig(**(base | overrides))


def write_images(folder: Path, n: int, rgb: bool = False) -> list[np.ndarray]:
    """`n` distinct noise images, named so that alphabetical order is creation order."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(42)
    images = []
    for i in range(n):
        shape = (H, W, 3) if rgb else (H, W)
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(img).save(folder / f"shot_{i:03d}.png")
        images.append(img)
    return images


@pytest.mark.slow
def test_enumerate_and_open_by_serial() -> None:
    serials = [c["serial"] for c in list_cameras()]
    assert "0815-0000" in serials and "0815-0001" in serials
    cam = PylonCamera(cfg(serial="0815-0001"))
    assert isinstance(cam, Camera)
    with cam:
        assert cam.is_emulator
        settings = cam.settings()
        assert settings["serial"] == "0815-0001"
        assert settings["model"] == "Emulation"
        frame = cam.grab()  # the emulator's built-in test pattern
        assert frame.image.shape == (H, W) and frame.image.dtype == np.uint8
        assert frame.camera_settings["serial"] == "0815-0001"
    assert not cam.is_open
    with pytest.raises(CameraError, match="not open"):
        cam.grab()


def test_serial_null_opens_only_a_lone_camera_and_an_emulator_only_to_play_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if any(c["device_class"] != "BaslerCamEmu" for c in list_cameras()):
        pytest.skip("a real camera is attached to this machine")
    write_images(tmp_path / "emu", 1)
    emu = str(tmp_path / "emu")
    with pytest.raises(CameraError, match="2 cameras found") as err:  # never devices[0]
        PylonCamera(cfg(serial=None, emulator_images=emu)).open()
    assert "0815-0000" in err.value.message and "0815-0001" in err.value.message
    assert "camera.serial" in (err.value.hint or "")
    monkeypatch.setenv("PYLON_CAMEMU", "1")
    # a real cell's recipe (no emulator_images) with PYLON_CAMEMU left set: refused
    with pytest.raises(CameraError, match=r"emulated camera .*PYLON_CAMEMU.* no real one") as err:
        PylonCamera(cfg(serial=None)).open()
    assert "\n" not in str(err.value) and "emulator_images" in (err.value.hint or "")
    with PylonCamera(cfg(serial=None, emulator_images=emu)) as cam:  # an emulated cell's recipe
        assert cam.is_emulator and cam.settings()["serial"] == "0815-0000"
    with PylonCamera(cfg(serial="0815-0000")) as cam:  # or one that names the emulated camera
        assert cam.is_emulator


def test_unknown_serial_names_it_and_lists_the_cameras() -> None:
    with pytest.raises(CameraError) as err:
        PylonCamera(cfg(serial="4711-9999")).open()
    assert "4711-9999" in err.value.message
    assert "0815-0000" in err.value.message and "0815-0001" in err.value.message


@pytest.mark.slow
def test_no_camera_hints_at_the_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYLON_CAMEMU", "0")
    if list_cameras():
        pytest.skip("a real camera is attached to this machine")
    with pytest.raises(CameraError, match="no Basler camera found") as err:
        PylonCamera(cfg()).open()
    assert "PYLON_CAMEMU" in (err.value.hint or "")


def test_settings_applied_and_read_back() -> None:
    c = cfg(width=320, height=200, exposure_us=12345.0, gain_db=6.5, serial="0815-0000")
    with PylonCamera(c) as cam:
        s = cam.settings()
        assert (s["width"], s["height"]) == (320, 200)
        assert s["exposure_us"] == pytest.approx(12345.0)
        assert s["gain_db"] == pytest.approx(6.5, abs=0.05)
        assert s["pixel_format"] == "Mono8"
        assert (s["trigger_mode"], s["trigger_source"]) == ("On", "Software")
        assert (s["binning_horizontal"], s["binning_vertical"]) == (1, 1)  # what the camera has
        assert (s["reverse_x"], s["reverse_y"]) == (False, False)
        assert "decimation_horizontal" not in s  # the emulator has no decimation
        frame = cam.grab()
        assert frame.image.shape == (200, 320)
        assert frame.camera_settings["exposure_us"] == pytest.approx(12345.0)
        assert frame.camera_settings["attempts"] == 1
        assert cam.device.ExposureTime.Value == pytest.approx(12345.0)


@pytest.mark.parametrize("fmt", ["RGB8", "BayerRG8"])
def test_colour_formats_give_hxwx3(fmt: str) -> None:
    with PylonCamera(cfg(pixel_format=fmt)) as cam:
        frame = cam.grab()
    assert frame.image.shape == (H, W, 3) and frame.image.dtype == np.uint8


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"width": 5000}, "camera.width"), ({"exposure_us": 5e7}, "camera.exposure_us")],
)
def test_out_of_range_setting_names_the_recipe_field(overrides: dict, field: str) -> None:
    with pytest.raises(CameraError, match=field.replace(".", r"\.")):
        PylonCamera(cfg(**overrides)).open()


def test_emulator_plays_the_folder_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATION_HOME", str(tmp_path))
    images = write_images(tmp_path / "emu", 4)
    # A relative folder resolves against the station home.
    with PylonCamera(cfg(emulator_images="emu")) as cam:
        got = [cam.grab().image for _ in range(6)]
        assert cam.settings()["emulator_images"] == str(tmp_path / "emu")
    for k, img in enumerate(got):  # grabbing keeps running, so the folder wraps, not rewinds
        assert np.array_equal(img, images[k % 4]), f"grab {k}"


def test_emulator_plays_rgb_files(tmp_path: Path) -> None:
    images = write_images(tmp_path / "rgb", 2, rgb=True)
    with PylonCamera(cfg(pixel_format="RGB8", emulator_images=str(tmp_path / "rgb"))) as cam:
        assert np.array_equal(cam.grab().image, images[0])
        assert np.array_equal(cam.grab().image, images[1])


def test_emulator_single_file(tmp_path: Path) -> None:
    images = write_images(tmp_path / "one", 1)
    with PylonCamera(cfg(emulator_images=str(tmp_path / "one" / "shot_000.png"))) as cam:
        assert np.array_equal(cam.grab().image, images[0])
        assert np.array_equal(cam.grab().image, images[0])


@pytest.mark.slow
def test_emulator_folder_problems_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="not found"):
        PylonCamera(cfg(emulator_images=str(tmp_path / "missing"))).open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CameraError, match="has no images"):
        PylonCamera(cfg(emulator_images=str(tmp_path / "empty"))).open()
    write_images(tmp_path / "mixed", 2)
    (tmp_path / "mixed" / "notes.txt").write_text("not an image")
    with pytest.raises(CameraError, match="notes.txt"):
        PylonCamera(cfg(emulator_images=str(tmp_path / "mixed"))).open()


def test_failed_buffer_is_retried(tmp_path: Path) -> None:
    images = write_images(tmp_path / "emu", 3)
    with PylonCamera(cfg(emulator_images=str(tmp_path / "emu"), retries=1)) as cam:
        cam.device.ForceFailedBufferCount.Value = 1
        cam.device.ForceFailedBuffer.Execute()
        frame = cam.grab()
        # The failed buffer used up file 0; the retry is the next exposure: file 1.
        assert frame.camera_settings["attempts"] == 2
        assert np.array_equal(frame.image, images[1])
        assert np.array_equal(cam.grab().image, images[2])


def test_failed_buffer_without_retries_raises(tmp_path: Path) -> None:
    write_images(tmp_path / "emu", 2)
    with PylonCamera(cfg(emulator_images=str(tmp_path / "emu"), retries=0)) as cam:
        cam.device.ForceFailedBufferCount.Value = 1
        cam.device.ForceFailedBuffer.Execute()
        with pytest.raises(CameraError) as err:
            cam.grab()
        msg = err.value.message
        assert "0815-0000" in msg and "1 try" in msg and "failed buffer" in msg
        assert "incompletely grabbed" in msg  # pylon's own description is passed on
        cam.grab()  # the camera recovers on the next grab


class _CountingCamera:
    """The driver's InstantCamera, counting the software triggers executed on it."""

    def __init__(self, cam: object) -> None:
        self._cam, self.triggers = cam, 0

    def ExecuteSoftwareTrigger(self) -> None:  # noqa: N802 - pylon's name
        self.triggers += 1
        self._cam.ExecuteSoftwareTrigger()

    def __getattr__(self, name: str) -> object:
        return getattr(self._cam, name)


def test_a_late_frame_never_answers_a_later_grab(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 4096 x 4096 file takes the emulator ~50 ms: with a 1 ms timeout the grab fails and its
    frame lands during the next grab, which must drop it and return its own trigger's frame
    (each file a distinct grey, played one per trigger)."""
    side, n = 4096, 4
    (tmp_path / "big").mkdir()
    for i in range(n):
        Image.fromarray(np.full((side, side), 40 + 50 * i, np.uint8)).save(
            tmp_path / "big" / f"{i:03d}.png"
        )
    base = cfg(width=side, height=side, emulator_images=str(tmp_path / "big"), retries=0)
    returned = []
    with PylonCamera(base) as cam:
        counter = cam._cam = _CountingCamera(cam._cam)
        for k in range(6):
            late = k % 2 == 0
            cam.cfg = base.model_copy(update={"timeout_ms": 1 if late else 5000})
            try:
                frame = cam.grab()
            except CameraError:
                assert late, f"grab {k}"
                continue
            own = (counter.triggers - 1) % n  # the file this grab's last trigger played
            assert int(frame.image[0, 0]) == 40 + 50 * own, f"grab {k}: an earlier trigger's frame"
            returned.append(k)
    assert {1, 3, 5} <= set(returned)
    assert "dropped a stale frame" in caplog.text


def test_a_frame_no_trigger_asked_for_is_dropped_and_the_numbering_learned_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = write_images(tmp_path / "emu", 4)
    with PylonCamera(cfg(emulator_images=str(tmp_path / "emu"), retries=1)) as cam:
        assert np.array_equal(cam.grab().image, images[0])
        cam.device.ExecuteSoftwareTrigger()  # behind the driver's back: plays file 1, block 1
        time.sleep(0.3)  # queued before the next grab (one racing its trigger cannot be told)
        frame = cam.grab()
        assert np.array_equal(frame.image, images[2]) and frame.camera_settings["attempts"] == 1
        assert np.array_equal(cam.grab().image, images[3])
    assert "out of sequence (block 1)" in caplog.text


def test_block_ids_out_of_sequence_fail_the_try_and_are_learned_again(tmp_path: Path) -> None:
    """As when a GigE camera's block ids wrap at 65535: the try cannot tell which trigger its
    frame answers, so it fails; the retry, with one trigger outstanding, learns them again."""
    from pypylon import pylon

    images = write_images(tmp_path / "emu", 4)
    with PylonCamera(cfg(emulator_images=str(tmp_path / "emu"), retries=1)) as cam:
        for k in range(3):
            assert np.array_equal(cam.grab().image, images[k])
        cam.device.StopGrabbing()  # block ids (and the emulator's folder) start again at 0
        cam.device.StartGrabbing(pylon.GrabStrategy_OneByOne)
        # block 0 after the first frame: a camera that numbers none, matched by order
        assert np.array_equal(cam.grab().image, images[0])
        frame = cam.grab()  # block 1 where the numbering learned says 4: the try fails
        assert frame.camera_settings["attempts"] == 2 and frame.camera_settings["block_id"] == 2
        assert np.array_equal(frame.image, images[2])
        frame = cam.grab()
        assert frame.camera_settings["attempts"] == 1 and np.array_equal(frame.image, images[3])


def _fail_first_read(cam: PylonCamera, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Make the camera's first frame conversion raise a real GenICam exception."""
    real, calls = cam._to_array, []

    def flaky(result: object) -> np.ndarray:
        calls.append(result)
        if len(calls) == 1:
            cam.device.Width.Value = 10**9  # locked while grabbing, and out of range
        return real(result)

    monkeypatch.setattr(cam, "_to_array", flaky)
    return calls


@pytest.mark.slow
def test_genicam_error_reading_a_frame_is_a_retried_camera_fault(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = write_images(tmp_path / "emu", 3)
    with PylonCamera(cfg(emulator_images=str(tmp_path / "emu"), retries=1)) as cam:
        calls = _fail_first_read(cam, monkeypatch)
        frame = cam.grab()
        assert frame.camera_settings["attempts"] == 2 and len(calls) == 2
        assert np.array_equal(frame.image, images[1])
    with PylonCamera(cfg(emulator_images=str(tmp_path / "emu"), retries=0)) as cam:
        _fail_first_read(cam, monkeypatch)
        with pytest.raises(CameraError, match="no image after 1 try"):
            cam.grab()


@pytest.mark.slow
def test_feature_file_roundtrip(tmp_path: Path) -> None:
    pfs = tmp_path / "cam" / "features.pfs"
    with PylonCamera(cfg(exposure_us=2222.0)) as cam:
        cam.device.BlackLevel.Value = 17.0  # a feature the recipe does not set
        assert cam.save_features(pfs) == pfs
    assert pfs.read_text().startswith("# {")  # pylon's persistence GUID line
    assert "BlackLevel\t17" in pfs.read_text()
    with PylonCamera(cfg(feature_file=str(pfs), exposure_us=3333.0)) as cam:
        assert cam.device.BlackLevel.Value == pytest.approx(17.0)  # from the file
        assert cam.settings()["exposure_us"] == pytest.approx(3333.0)  # the recipe wins
    with PylonCamera(cfg()) as cam:  # without the file the device starts from its defaults
        assert cam.device.BlackLevel.Value == pytest.approx(0.0)


@pytest.mark.slow
def test_bad_feature_files_are_clear(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match="feature file .* not found"):
        PylonCamera(cfg(feature_file=str(tmp_path / "none.pfs"))).open()
    bad = tmp_path / "bad.pfs"
    bad.write_text("Width\tabc\n")
    with pytest.raises(CameraError, match="could not be applied") as err:
        PylonCamera(cfg(feature_file=str(bad))).open()
    assert "\n" not in str(err.value)


def _feature_file_with(tmp_path: Path, name: str, value: str) -> Path:
    """A feature file saved from the emulator, with one feature's line changed."""
    pfs = tmp_path / "geom.pfs"
    with PylonCamera(cfg()) as cam:
        cam.device.StopGrabbing()  # binning and reverse are saved only while not grabbing
        cam.save_features(pfs)
    text = pfs.read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith(f"{name}\t"))
    pfs.write_text(text.replace(line, f"{name}\t{value}"))
    return pfs


@pytest.mark.parametrize(("name", "value"), [("ReverseX", "1"), ("BinningHorizontal", "2")])
def test_feature_file_geometry_is_refused(tmp_path: Path, name: str, value: str) -> None:
    """Binning or mirroring from a .pfs would change the image the station's geometry (sheet
    map, coverage, mm/px, calibration) maps: refused, naming the feature and the file."""
    pfs = _feature_file_with(tmp_path, name, value)
    with pytest.raises(CameraError, match=f"feature file {pfs} sets {name} {value}") as err:
        PylonCamera(cfg(feature_file=str(pfs))).open()
    assert "\n" not in str(err.value) and name in (err.value.hint or "")


def test_geometry_left_from_earlier_use_is_reset(caplog: pytest.LogCaptureFixture) -> None:
    # the emulator starts every open from its defaults; a real camera keeps what was set last
    with PylonCamera(cfg()) as cam:
        cam.device.StopGrabbing()
        cam.device.BinningVertical.Value = 2
        cam.device.ReverseY.Value = True
        cam._plain_geometry(None)
        assert cam.device.BinningVertical.Value == 1 and not cam.device.ReverseY.Value
    assert "BinningVertical was 2" in caplog.text and "ReverseY was 1" in caplog.text


def test_a_recipe_cannot_ask_for_a_hardware_trigger() -> None:
    """Nothing in the station pulses the camera's trigger input: every shot would time out."""
    import yaml

    from station.errors import RecipeError
    from station.recipe import parse_recipe

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "recipes" / "glassfiber.yaml")
                          .read_text())
    data["backend"] = "real"
    assert parse_recipe(yaml.safe_dump(data)).camera.trigger == "software"
    data["camera"]["trigger"] = "hardware"
    with pytest.raises(RecipeError, match=r"camera\.trigger: .*only software triggers"):
        parse_recipe(yaml.safe_dump(data))


@pytest.mark.slow
def test_prepare_twin_images_feeds_the_emulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from station.devices.pylon_emulator import prepare_twin_images, read_manifest
    from station.recipe import load_recipe

    monkeypatch.setenv("STATION_HOME", str(Path(__file__).resolve().parents[1]))
    monkeypatch.setenv("PYLON_CAMEMU", "1")  # as the emulated cell runs: its recipe names no serial
    recipe = load_recipe("glassfiber-emulated")
    folder = tmp_path / "emu"
    poses = [p.name for p in recipe.robot.poses]
    # for inspection each sheet's poses, then the reference card's shot, as the cycle grabs them
    assert recipe.monitoring.drift.reference.enabled
    for_inspect = prepare_twin_images(recipe, 2, folder)
    assert [s.pose for s in for_inspect] == [*poses, "card"] * 2
    card = np.asarray(Image.open(for_inspect[len(poses)].image_path))
    sheet = np.asarray(Image.open(for_inspect[0].image_path))
    assert card.shape == sheet.shape and not np.array_equal(card, sheet)
    (folder / "view00.png").write_bytes(b"a board view of calibrate-camera --prepare-emulator")
    shots = prepare_twin_images(recipe, 2, folder, use="capture")
    assert not (folder / "view00.png").exists()  # replaced, as cellcal replaces these
    assert [s.pose for s in shots] == poses * 2
    assert read_manifest(folder) == shots
    # capture frames are other sheets than the ones an inspection plays by default
    from station.twin import CAPTURE_SEED_OFFSET

    seed = recipe.twin.seed
    assert [s.part_seed for s in for_inspect[:: len(poses) + 1]] == [seed, seed + 1]
    captured = [s.part_seed for s in shots[:: len(poses)]]
    assert captured == [seed + CAPTURE_SEED_OFFSET + i for i in (0, 1)]
    with pytest.raises(StationError, match="other files"):
        (folder / "x.txt").write_text("x")
        prepare_twin_images(recipe, 1, folder)
    (folder / "x.txt").unlink()
    camera_cfg = recipe.camera.model_copy(update={"emulator_images": str(folder)})
    with PylonCamera(camera_cfg) as cam:
        for shot in shots:
            expected = np.asarray(Image.open(shot.image_path))
            assert np.array_equal(cam.grab().image, expected), shot.image_path


def test_a_run_refuses_emulator_frames_made_for_another_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator plays its files in order: frames made for capture (no card shot) or for
    other poses would reach the wrong pose of an inspection, so the run refuses them."""
    import json

    from station.devices.pylon_emulator import check_sequence
    from station.recipe import load_recipe

    monkeypatch.setenv("STATION_HOME", str(Path(__file__).resolve().parents[1]))
    recipe = load_recipe("glassfiber-emulated")
    folder = tmp_path / "emu"
    recipe = recipe.model_copy(
        update={"camera": recipe.camera.model_copy(update={"emulator_images": str(folder)})}
    )
    poses = [p.name for p in recipe.robot.poses]

    def manifest(use: str, names: list[str]) -> None:
        shots = [{"pose": n, "part_index": 0} for n in names]
        (tmp_path / "emu.json").write_text(json.dumps({"use": use, "shots": shots}))

    monkeypatch.setenv("PYLON_CAMEMU", "1")
    manifest("capture", poses)
    check_sequence(recipe, "capture")
    with pytest.raises(StationError, match="rendered for station capture, not inspect") as err:
        check_sequence(recipe, "inspect")
    assert "--for inspect" in (err.value.hint or "")
    manifest("inspect", [*poses, "card"])
    check_sequence(recipe, "inspect")
    manifest("inspect", [*poses[:-1], "card"])  # the recipe's poses changed since
    with pytest.raises(StationError, match="but the recipe visits"):
        check_sequence(recipe, "inspect")
    monkeypatch.delenv("PYLON_CAMEMU")
    check_sequence(recipe, "inspect")  # a real camera: nothing to check
