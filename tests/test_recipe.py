"""Recipe validation and the `station recipe check` / `station db upgrade` commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from station.errors import RecipeError
from station.recipe import load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]
SHIPPED = (REPO / "recipes" / "glassfiber.yaml").read_text()


def _station(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "station", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"STATION_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def _mutated(edit) -> str:  # noqa: ANN001
    data = yaml.safe_load(SHIPPED)
    edit(data)
    return yaml.safe_dump(data)


def test_shipped_recipes_are_valid(station_home: Path) -> None:
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(str(path))
        assert recipe.name
    r = load_recipe("glassfiber")
    assert [p.name for p in r.robot.poses] == ["left", "centre", "right"]
    assert r.robot_driver == "sim" and r.camera_driver == "sim" and r.line_driver == "sim"
    assert r.detectors[0].name == "patchcore"
    assert r.storage.resolved_database_url() == f"sqlite:///{station_home}/data/station.db"
    assert r.dataset_dir == station_home / "data" / "glassfiber" / "dataset"
    assert len(r.sha256) == 64


def test_real_backend_picks_real_drivers() -> None:
    r = parse_recipe(_mutated(lambda d: d.update(backend="real")))
    assert (r.robot_driver, r.camera_driver, r.line_driver) == ("ur_rtde", "pylon", "ur_rtde")


def test_pose_as_ur_is_metres() -> None:
    r = parse_recipe(SHIPPED)
    assert r.robot.poses[1].as_ur()[:3] == pytest.approx([0.4, 0.0, 0.35])


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["camera"].update(exposur_us=5), "camera.exposur_us: unknown field"),
        (lambda d: d["camera"].update(width="wide"), "camera.width: "),
        (lambda d: d["robot"].pop("poses"), "robot.poses: required field is missing"),
        (lambda d: d["robot"].update(poses=[]), "robot.poses: "),
        (lambda d: d["detectors"][0].update(name="magic"), "unknown detector 'magic'"),
        (lambda d: d["detectors"][0].update(device="gpu"), "detectors.0.device"),
        (lambda d: d.update(backend="hybrid"), "backend: "),
    ],
)
def test_invalid_recipes_name_the_field(edit, expected: str) -> None:  # noqa: ANN001
    with pytest.raises(RecipeError) as info:
        parse_recipe(_mutated(edit), "bad.yaml")
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_several_problems_are_all_reported() -> None:
    def edit(d: dict) -> None:
        d["camera"]["gain"] = 3
        d["robot"].pop("poses")
        d["detectors"][0]["name"] = "magic"

    with pytest.raises(RecipeError) as info:
        parse_recipe(_mutated(edit))
    assert len(info.value.problems) == 3


def test_duplicate_pose_names_rejected() -> None:
    def edit(d: dict) -> None:
        d["robot"]["poses"][1]["name"] = "left"

    with pytest.raises(RecipeError, match="unique"):
        parse_recipe(_mutated(edit))


def test_extends_overlays_the_base(station_home: Path) -> None:
    base = load_recipe("glassfiber")
    gpu = load_recipe("glassfiber-gpu")
    assert gpu.name == "glassfiber-gpu" and gpu.preprocess.size == (320, 320)
    assert [d.backbone for d in gpu.detectors] == ["efficientnet_lite2"]  # lists replace
    assert gpu.robot == base.robot and gpu.camera == base.camera  # untouched sections
    assert gpu.preprocess.grey_to_rgb == base.preprocess.grey_to_rgb  # mappings merge
    assert gpu.data_dir == station_home / "data" / "glassfiber-gpu"
    before = gpu.sha256
    (station_home / "recipes" / "glassfiber.yaml").write_text(
        (station_home / "recipes" / "glassfiber.yaml").read_text().replace(
            "settle_s: 0.15", "settle_s: 0.3"
        )
    )
    changed = load_recipe("glassfiber-gpu")
    assert changed.robot.settle_s == 0.3 and changed.sha256 != before  # digest covers the base


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("extends: glassfiber\n", "name: required in a recipe that extends another"),
        ("extends: nosuch\nname: x\n", "file not found"),
        ("extends: [glassfiber]\nname: x\n", "extends: expected the name or path"),
        ("extends: glassfiber\nname: x\ncamera: {gian_db: 2}\n", "camera.gian_db: unknown field"),
    ],
)
def test_extends_errors_name_the_problem(station_home: Path, text: str, expected: str) -> None:
    with pytest.raises(RecipeError, match=expected):
        parse_recipe(text, "child.yaml")


def test_extends_loop_is_refused(station_home: Path) -> None:
    recipes = station_home / "recipes"
    (recipes / "a.yaml").write_text("extends: b\nname: a\n")
    (recipes / "b.yaml").write_text("extends: a\nname: b\n")
    with pytest.raises(RecipeError, match="a loop"):
        load_recipe("a")


def test_yaml_syntax_error_names_line() -> None:
    with pytest.raises(RecipeError, match="line 2"):
        parse_recipe("name: x\n  bad: [\n", "broken.yaml")


def test_cli_check_prints_summary(station_home: Path) -> None:
    out = _station("recipe", "check", "glassfiber", home=station_home)
    assert out.returncode == 0, out.stderr
    assert "recipe glassfiber" in out.stdout
    assert "left" in out.stdout and "patchcore" in out.stdout
    assert "is valid" in out.stdout


def test_cli_check_bad_recipe_one_line_per_problem(station_home: Path) -> None:
    def edit(d: dict) -> None:
        d["camera"]["exposur_us"] = 5
        d["camera"]["width"] = "wide"
        d["robot"].pop("poses")
        d["detectors"][0]["name"] = "magic"

    bad = station_home / "recipes" / "bad.yaml"
    bad.write_text(_mutated(edit))
    out = _station("recipe", "check", "bad", home=station_home)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    problems = [line for line in out.stderr.splitlines() if line.strip().startswith(str(bad))]
    assert len(problems) == 4, out.stderr
    assert any("camera.exposur_us: unknown field" in p for p in problems)
    assert any("robot.poses: required field is missing" in p for p in problems)


def test_cli_check_sees_what_the_schema_cannot(station_home: Path) -> None:
    """Detector params, backbone, weights on this machine, the twin's settings."""

    def edit(d: dict) -> None:
        d["detectors"][0]["params"].update(coreset_rati=0.1, num_neighbors="nine")
        d["detectors"].append({"name": "simplenet", "backbone": "nosuchnet"})
        d["detectors"].append({"name": "dfda", "backbone": "wide_resnet50_2"})
        d["twin"]["defect_kinds"] = {"nosuch": 1}

    (station_home / "recipes" / "deep.yaml").write_text(_mutated(edit))
    out = _station("recipe", "check", "deep", home=station_home)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    for expected in (
        "detectors[0].params: patchcore: unknown parameter 'coreset_rati'",
        "detectors[0].params: patchcore: parameter 'num_neighbors' must be a whole number",
        "detectors[1].backbone: unknown backbone 'nosuchnet'",
        "detectors[2].weights: no auto weights for backbone wide_resnet50_2",
        "twin.defect_kinds: unknown kind nosuch",
    ):
        assert expected in out.stderr, out.stderr
    for text, expected in (
        (SHIPPED.replace("size: [256, 256]", "size: [0, 256]"), "preprocess.size.0"),
        (b"\xff\xfe not text", "not a UTF-8 text file"),
    ):
        path = station_home / "recipes" / "odd.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        out = _station("recipe", "check", "odd", home=station_home)
        assert out.returncode == 2 and expected in out.stderr, out.stderr
        assert "Traceback" not in out.stderr


def test_cli_missing_recipe(station_home: Path) -> None:
    out = _station("recipe", "check", "nosuch", home=station_home)
    assert out.returncode == 2
    assert "file not found" in out.stderr and "Traceback" not in out.stderr


def test_cli_version_and_db_upgrade(station_home: Path) -> None:
    out = _station("--version", home=station_home)
    assert out.returncode == 0 and out.stdout.startswith("station ")
    out = _station("db", "upgrade", home=station_home)
    assert out.returncode == 0, out.stderr
    assert (station_home / "data" / "station.db").is_file()
    assert "revision 0002" in out.stdout


def test_relative_recipe_path_is_taken_from_the_current_folder(
    station_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from station.recipe import find_recipe

    here = tmp_path / "work"
    here.mkdir()
    (here / "mine.yaml").write_text(SHIPPED.replace("name: glassfiber", "name: mine"))
    monkeypatch.chdir(here)
    assert find_recipe("mine.yaml") == here / "mine.yaml"
    assert load_recipe("mine.yaml").name == "mine"
    # not in the current folder: from the station home, as before
    assert find_recipe("recipes/glassfiber.yaml") == station_home / "recipes" / "glassfiber.yaml"
