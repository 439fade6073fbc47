"""Device plugins: one typed config per driver chosen by `driver`, one builder per driver, and
the layering between the real drivers and the twin."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from station.devices.drivers import CAMERAS, LINES, ROBOTS, as_config
from station.errors import RecipeError
from station.recipe import (
    PylonCameraConfig,
    SimCameraConfig,
    SimRobotConfig,
    URLineConfig,
    URRobotConfig,
    parse_recipe,
)
from station.recipe.devices import CAMERA, LINE_IO, ROBOT

REPO = Path(__file__).resolve().parents[1]
SHIPPED = (REPO / "recipes" / "glassfiber.yaml").read_text()


def _parse(edit) -> object:  # noqa: ANN001
    data = yaml.safe_load(SHIPPED)
    edit(data)
    return parse_recipe(yaml.safe_dump(data))


def test_every_driver_has_a_config_and_a_builder() -> None:
    for device, registry in ((ROBOT, ROBOTS), (CAMERA, CAMERAS), (LINE_IO, LINES)):
        assert set(device.configs) == set(registry.builders), device.section
        assert registry.twin == {"sim"}
        for name, cls in device.configs.items():
            assert cls.model_fields["driver"].default == name


def test_auto_follows_the_backend_and_each_driver_gets_its_config() -> None:
    sim = _parse(lambda d: None)
    assert isinstance(sim.robot, SimRobotConfig) and isinstance(sim.camera, SimCameraConfig)
    real = _parse(lambda d: d.update(backend="real"))
    assert isinstance(real.robot, URRobotConfig) and isinstance(real.camera, PylonCameraConfig)
    assert isinstance(real.line_io, URLineConfig)
    assert real.robot.connect_timeout_s == 5 and real.robot.host == "192.168.10.20"
    mixed = _parse(lambda d: d["camera"].update(driver="pylon", serial="0815"))
    assert isinstance(mixed.camera, PylonCameraConfig) and mixed.camera.serial == "0815"
    assert (mixed.robot_driver, mixed.camera_driver) == ("sim", "pylon")


def test_other_drivers_settings_are_checked_then_left_out() -> None:
    r = _parse(lambda d: d["camera"].update(serial="0815", emulator_images="x"))
    assert isinstance(r.camera, SimCameraConfig) and not hasattr(r.camera, "serial")
    with pytest.raises(RecipeError, match=r"robot\.connect_timeout_s: must be above 0 and at most"):
        _parse(lambda d: d["robot"].update(connect_timeout_s=99999))
    with pytest.raises(RecipeError, match=r"camera\.serial: "):
        _parse(lambda d: d["camera"].update(serial=[1]))
    with pytest.raises(RecipeError, match=r"camera\.sereal: unknown field"):
        _parse(lambda d: d["camera"].update(sereal="0815"))


def test_unknown_driver_names_the_field_and_the_choices() -> None:
    with pytest.raises(RecipeError, match=r"camera\.driver: Input should be 'auto', 'sim' or "
                                          r"'pylon' \(got 'usb'\)"):
        _parse(lambda d: d["camera"].update(driver="usb"))
    with pytest.raises(RecipeError, match=r"camera\.width: must be at least 16"):
        _parse(lambda d: d.update(backend="real") or d["camera"].update(width=3))


def test_as_config_turns_a_copied_config_into_the_drivers_own() -> None:
    sim = _parse(lambda d: None)
    ur = as_config(URRobotConfig, sim.robot.model_copy(update={"host": "10.0.0.9"}))
    assert isinstance(ur, URRobotConfig) and ur.host == "10.0.0.9"
    assert ur.poses == sim.robot.poses and ur.connect_timeout_s == 5.0
    assert as_config(SimRobotConfig, sim.robot) is sim.robot


def _station_imports(path: Path) -> set[str]:
    """Every `station...` module a file imports, at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("station")}


@pytest.mark.parametrize(("package", "forbidden"), [
    ("hardware", ("station.twin", "station.devices")),
    ("twin", ("station.hardware", "station.devices")),
])
def test_hardware_and_twin_do_not_import_each_other(package: str, forbidden: tuple) -> None:
    paths = sorted((REPO / "station" / package).rglob("*.py"))
    assert len(paths) >= 5, f"station/{package}: too few modules found to check"
    for path in paths:
        bad = {m for m in _station_imports(path) if m.startswith(forbidden)}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_recipe_layer_imports_no_device_code() -> None:
    paths = [*sorted((REPO / "station" / "recipe").glob("*.py")), REPO / "station/interfaces.py"]
    assert len(paths) >= 7
    allowed = {"station.errors", "station.paths", "station.recipe", "station.recipe.base",
               "station.recipe.devices", "station.recipe.yaml_io", "station.recipe.quality",
               "station.recipe.model", "station.recipe.load"}
    for path in paths:
        assert _station_imports(path) <= allowed, path.name


def test_sheet_does_not_import_the_defects() -> None:
    assert not {m for m in _station_imports(REPO / "station/twin/sheet.py")
                if m.startswith("station.twin.")}
