"""Recipe validation and the `station recipe check` / `station db upgrade` commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from station.detectors.registry import load_recipe, parse_recipe
from station.errors import RecipeError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = (REPO / "recipes" / "glassfiber.yaml").read_text()
# the shipped recipe's poses, written by station plan-poses into robot.poses_file
POSES = yaml.safe_load((REPO / "recipes" / "glassfiber.poses.yaml").read_text())["poses"]


def _station(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "station", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"STATION_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )


def _mutated(edit) -> str:  # noqa: ANN001
    """The shipped recipe edited, its poses inline (so that an edit may touch robot.poses)."""
    data = yaml.safe_load(SHIPPED)
    data["robot"].pop("poses_file")
    data["robot"]["poses"] = [dict(p) for p in POSES]
    edit(data)
    return yaml.safe_dump(data)


def test_shipped_recipes_are_valid(station_home: Path) -> None:
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        if not path.name.endswith(".poses.yaml"):  # poses files are read by their recipe
            recipe = load_recipe(str(path))
            assert recipe.name
    r = load_recipe("glassfiber")
    assert r.robot.poses_file == "glassfiber.poses.yaml"
    assert [p.name for p in r.robot.poses] == [p["name"] for p in POSES]
    assert len(POSES) > 3  # a raster over the whole sheet, not the old three poses
    assert r.robot_driver == "sim" and r.camera_driver == "sim" and r.line_driver == "sim"
    assert r.detectors[0].name == "patchcore"
    assert r.storage.resolved_database_url() == f"sqlite:///{station_home}/data/station.db"
    assert r.dataset_dir == station_home / "data" / "glassfiber" / "dataset"
    assert len(r.sha256) == 64


def test_real_backend_picks_real_drivers() -> None:
    r = parse_recipe(_mutated(lambda d: d.update(backend="real")))
    assert (r.robot_driver, r.camera_driver, r.line_driver) == ("ur_rtde", "pylon", "ur_rtde")


def test_pose_as_ur_is_metres() -> None:
    r = parse_recipe(SHIPPED)  # not from a file: the poses file is found under recipes/
    x, y, z = POSES[1]["position_mm"]
    assert r.robot.poses[1].as_ur()[:3] == pytest.approx([x / 1000, y / 1000, z / 1000])


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
        (  # a real line without RESULT_VALID: a stuck station's last REJECT low would stand
            lambda d: d.update(backend="real") or d["line_io"].update(result_valid_output=None),
            "line_io: result_valid_output is null: a ur_rtde line cannot run without it",
        ),
        (
            lambda d: d.update(backend="real") or d["line_io"].update(heartbeat_output=None),
            "line_io: heartbeat_output is null: a ur_rtde line cannot run without it",
        ),
        (  # a real line signalling verdicts made on the twin's images
            lambda d: d.update(backend="real") or d["camera"].update(driver="sim"),
            "camera.driver: sim with line_io.driver ur_rtde: real sheets would be judged on "
            "the twin's shots",
        ),
        (  # a real robot's sheets whose verdicts no line hears
            lambda d: d.update(backend="real") or d["line_io"].update(driver="sim"),
            "line_io.driver: sim with robot.driver ur_rtde: the robot would inspect real "
            "sheets whose verdicts no line hears",
        ),
        (  # a coarser grid than half the smallest defect could pass an unseen strip
            lambda d: d["decision"].update(sheet_map_mm_per_px=1.5),
            "decision.sheet_map_mm_per_px: 1.5 mm cells can miss an unseen gap as narrow as "
            "coverage.smallest_defect_mm (2 mm); use at most 1 mm/px",
        ),
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
        d["robot"]["poses"][1]["name"] = d["robot"]["poses"][0]["name"]

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


@pytest.mark.slow
def test_cli_check_prints_summary(station_home: Path) -> None:
    out = _station("recipe", "check", "glassfiber", home=station_home)
    assert out.returncode == 0, out.stderr
    assert "recipe glassfiber" in out.stdout
    assert POSES[0]["name"] in out.stdout and "patchcore" in out.stdout
    assert "coverage 100.0 %" in out.stdout
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


@pytest.mark.slow
def test_cli_check_sees_what_the_schema_cannot(station_home: Path) -> None:
    """Detector params, backbone, weights on this machine, the twin's settings."""

    def edit(d: dict) -> None:
        d["detectors"][0]["params"].update(coreset_rati=0.1, num_neighbors="nine")
        d["detectors"].append({"name": "simplenet", "backbone": "nosuchnet"})
        d["detectors"].append({"name": "dfda", "backbone": "wide_resnet50_2"})
        d["twin"]["defect_kinds"] = {"nosuch": 1}
        d["twin"].setdefault("params", {}).update(lamp_jiter=0.5, first_sheeet=3)

    (station_home / "recipes" / "deep.yaml").write_text(_mutated(edit))
    out = _station("recipe", "check", "deep", home=station_home)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    for expected in (
        "detectors[0].params: patchcore: unknown parameter 'coreset_rati'",
        "detectors[0].params: patchcore: parameter 'num_neighbors' must be a whole number",
        "detectors[1].backbone: unknown backbone 'nosuchnet'",
        "detectors[2].weights: no auto weights for backbone wide_resnet50_2",
        "twin.defect_kinds: unknown kind nosuch",
        "twin.params.lamp_jiter: not a twin setting; did you mean lamp_jitter?",
        "twin.params.first_sheeet: not a twin setting; did you mean first_sheet?",
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


def test_cli_recipe_path_that_is_a_folder(station_home: Path, tmp_path: Path) -> None:
    out = _station("recipe", "check", str(tmp_path), home=station_home)
    assert out.returncode == 2 and out.stdout == "", out.stdout
    assert out.stderr.strip() == f"error: {tmp_path}: is a folder, not a recipe file; give a " \
        "recipe .yaml file", out.stderr


def test_cli_db_upgrade_under_a_file_names_the_file(station_home: Path, tmp_path: Path) -> None:
    (afile := tmp_path / "afile").write_text("")
    for db in (afile / "x.db", afile / "sub" / "x.db"):
        out = _station("db", "upgrade", "--url", f"sqlite:///{db}", home=station_home)
        assert out.returncode == 2 and out.stdout == "", out.stdout
        first = out.stderr.splitlines()[0]
        assert first == f"error: database {db}: {afile} is a file, not a folder", out.stderr
        assert "File exists" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_cli_version_and_db_upgrade(station_home: Path) -> None:
    out = _station("--version", home=station_home)
    assert out.returncode == 0 and out.stdout.startswith("station ")
    out = _station("db", "upgrade", home=station_home)
    assert out.returncode == 0, out.stderr
    assert (station_home / "data" / "station.db").is_file()
    versions = REPO / "station/storage/migrations/versions"
    head = max(p.name[:4] for p in versions.glob("[0-9][0-9][0-9][0-9]_*.py"))
    assert f"revision {head}" in out.stdout  # the newest migration


def test_relative_recipe_path_is_taken_from_the_current_folder(
    station_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from station.recipe import find_recipe

    here = tmp_path / "work"
    here.mkdir()
    (here / "mine.yaml").write_text(SHIPPED.replace("name: glassfiber", "name: mine"))
    poses = "glassfiber.poses.yaml"  # robot.poses_file: beside the recipe
    (here / poses).write_text((REPO / "recipes" / poses).read_text())
    monkeypatch.chdir(here)
    assert find_recipe("mine.yaml") == here / "mine.yaml"
    assert load_recipe("mine.yaml").name == "mine"
    # not in the current folder: from the station home, as before
    assert find_recipe("recipes/glassfiber.yaml") == station_home / "recipes" / "glassfiber.yaml"


def test_a_bare_recipe_name_is_a_name_whatever_the_current_folder_holds(
    station_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from station.recipe import find_recipe

    here = tmp_path / "work"
    (here / "glassfiber").mkdir(parents=True)  # a data folder named after its recipe
    monkeypatch.chdir(here)
    assert find_recipe("glassfiber") == station_home / "recipes" / "glassfiber.yaml"
    assert load_recipe("glassfiber").name == "glassfiber"
    with pytest.raises(RecipeError, match="is a folder"):
        find_recipe("./glassfiber")  # a path: the folder itself


# -- issue 23: non-finite numbers, bounded sizes, duplicate keys, bounded reads ---------------


def _problems(text: str) -> list[str]:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "bad.yaml")
    return info.value.problems


def _cli_problems(station_home: Path, text: str | None = None) -> list[str]:
    """`station recipe check bad`: exit 2, no traceback; the problem lines."""
    if text is not None:
        (station_home / "recipes" / "bad.yaml").write_text(text)
    out = _station("recipe", "check", "bad", home=station_home)
    assert out.returncode == 2 and "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = [line.strip() for line in out.stderr.splitlines() if "bad.yaml" in line]
    if lines[0].endswith("is not valid:"):  # several problems: a heading, then one line each
        return lines[1:]
    assert len(lines) == 1 and lines[0].startswith("error: ")  # one problem: one line
    return [lines[0].removeprefix("error: ")]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("exposure_us: 4000", "exposure_us: .inf", "camera.exposure_us: Input should be a finite"),
        ("exposure_us: 4000", "exposure_us: 'nan'", "camera.exposure_us: Input should be a finite"),
        ("[400.0, 0.0, 500.0]", "[400.0, .nan, 500.0]", "robot.home.position_mm.1: Input"),
        ("defect_kinds: {}", "defect_kinds: {hole: .inf}", "twin.defect_kinds.hole: Input"),
        ("num_neighbors: 9", "num_neighbors: -.inf", "detectors.0.params: num_neighbors = -inf"),
        (
            "defect_kinds: {}",
            "defect_kinds: {}\n  params: {side_light_mm: [100, .nan, 650]}",
            "twin.params: side_light_mm.1 = nan: every number must be finite",
        ),
    ],
)
def test_non_finite_numbers_are_refused(old: str, new: str, expected: str) -> None:
    assert old in SHIPPED
    problems = _problems(SHIPPED.replace(old, new, 1))
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda d: d["camera"].update(width=10**8, height=10**8),
            "camera.width: must be at least 16 and at most 16384 (got 100000000)",
        ),
        (
            lambda d: d.update(backend="real") or d["camera"].update(width=16384, height=16384),
            "camera: width x height = 16384 x 16384 is more than 67,108,864 pixels",
        ),
        (
            lambda d: d["camera"].update(width=8000),
            "camera.width: the twin camera (driver sim) renders at most 4096 x 4096 px",
        ),
        (
            lambda d: d["preprocess"].update(crop=[600, 0, 100, 10**8]),
            "preprocess.crop: [600, 0, 100, 100000000] (x, y, width, height) must lie within",
        ),
        (lambda d: d["preprocess"].update(size=[10**5, 256]), "preprocess.size.0: must be at"),
        (lambda d: d["camera"].update(exposure_us=1e12), "camera.exposure_us: must be above 0"),
        (lambda d: d["camera"].update(timeout_ms=10**12), "camera.timeout_ms: must be above 0"),
        (lambda d: d["camera"].update(retries=10**9), "camera.retries: must be at least 0 and"),
        (lambda d: d["robot"].update(move_timeout_s=1e300), "robot.move_timeout_s: must be"),
        (lambda d: d["robot"].update(speed_mm_s=5000), "robot.speed_mm_s: must be above 0 and"),
        (lambda d: d["robot"].update(poses=d["robot"]["poses"] * 140), "robot.poses: List should"),
        (lambda d: d["twin"].update(roving_pitch_mm=1e-9), "twin.roving_pitch_mm: must be at"),
        (lambda d: d.setdefault("sheet", {}).update(width_mm=1e9), "sheet.width_mm: must be at"),
        (lambda d: d["twin"].update(defect_size_mm=[3, 1e6]), "twin.defect_size_mm.1: must be"),
        (lambda d: d["twin"].update(seed=-1), "twin.seed: must be at least 0 and at most"),
        (lambda d: d["twin"].update(time_scale=1e9), "twin.time_scale: must be at least 0 and"),
        (
            lambda d: d["twin"].update(params={"side_light_mm": 5}),  # was a TypeError traceback
            "twin.params: side_light_mm must be [x, y, z] in mm, z above 0, not 5",
        ),
        (
            lambda d: d["twin"].update(params={"side_light_mm": [0, 0, 0]}),  # ZeroDivisionError
            "twin.params: side_light_mm must be",
        ),
        (
            lambda d: d["twin"].update(params={"line_transfer_s": "slow"}),
            "twin.params: line_transfer_s must be a number above 0, not 'slow'",
        ),
    ],
)
def test_sizes_are_bounded_with_the_range(edit, expected: str) -> None:  # noqa: ANN001
    problems = _problems(_mutated(edit))
    assert any(p.startswith(expected) for p in problems), problems


def test_the_largest_sizes_pass() -> None:
    def edit(d: dict) -> None:
        d["camera"].update(width=4096, height=4096)  # the twin's and the emulator's limit
        d["preprocess"].update(crop=[0, 0, 4096, 4096], size=[4096, 4096])

    parse_recipe(_mutated(edit))

    def boost(d: dict) -> None:  # Basler boost 65 MP, on the real camera
        d["backend"] = "real"
        d["camera"].update(width=9344, height=7000)

    assert parse_recipe(_mutated(boost)).camera.width == 9344


def _line(prefix: str) -> int:
    """The number of the shipped recipe's first line that starts with `prefix`."""
    return next(i for i, t in enumerate(SHIPPED.splitlines(), 1) if t.startswith(prefix))


TWICE = SHIPPED + "twin:\n  seed: 3\n"  # `twin` again, on the line after the last
TWIN, AGAIN = _line("twin:"), SHIPPED.count("\n") + 1
WEAVE, KINDS = _line("  weave:"), _line("  defect_kinds:")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (TWICE, f"key 'twin' is given twice (lines {TWIN} and {AGAIN})"),
        (
            SHIPPED.replace("  weave: plain", "  weave: plain\n  weave: twill"),
            f"key 'weave' is given twice (lines {WEAVE} and {WEAVE + 1})",
        ),
        (
            SHIPPED.replace("defect_kinds: {}", "defect_kinds: {hole: 1, hole: 2}"),
            f"key 'hole' is given twice (lines {KINDS} and {KINDS})",
        ),
    ],
)
def test_duplicate_keys_are_refused_with_both_lines(text: str, expected: str) -> None:
    (problem,) = _problems(text)
    assert expected in problem, problem


def test_anchors_and_merge_keys_still_work() -> None:
    text = SHIPPED.replace("lens:\n", "lens: &lens\n").replace(
        "preprocess:\n", "preprocess: &pre\n"
    )
    text = text.replace("detectors:\n", "x: &x {<<: *lens, f_number: 2.0}\ndetectors:\n")
    problems = _problems(text)  # the merged mapping overrides f_number: no duplicate
    assert problems == ["x: unknown field (typo?)"], problems


def test_alias_bombs_and_deep_nesting_are_refused_fast() -> None:
    import time

    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )  # 10^9 values once expanded
    start = time.perf_counter()
    (problem,) = _problems(bomb + SHIPPED)
    assert "more than 100,000 values, counting each alias (*name) expanded" in problem
    (problem,) = _problems(SHIPPED + "x: &s [*s]\n")  # refers to itself
    assert "more than 100,000 values" in problem
    (problem,) = _problems(SHIPPED + "x: " + "[" * 500 + "]" * 500 + "\n")
    assert "nested more than 32 levels deep" in problem
    assert time.perf_counter() - start < 5


@pytest.mark.slow
def test_cli_refuses_non_finite_and_huge_values(station_home: Path) -> None:
    text = SHIPPED.replace("name: glassfiber", "name: bad").replace(
        "exposure_us: 4000", "exposure_us: .inf"
    )
    assert _cli_problems(station_home, text) == [
        f"{station_home}/recipes/bad.yaml: camera.exposure_us: Input should be a finite number "
        "(got inf)"
    ]
    text = SHIPPED.replace("width: 640 ", "width: 100000000 ")
    (line,) = _cli_problems(station_home, text)
    assert "camera.width: must be at least 16 and at most 16384 (got 100000000)" in line
    # a detector param out of range: named before any model is built
    text = SHIPPED.replace("coreset_ratio: 0.03", "coreset_ratio: 0")
    (line,) = _cli_problems(station_home, text)
    assert "detectors[0].params: patchcore: coreset_ratio must be in (0, 1], not 0" in line
    (line,) = _cli_problems(station_home, TWICE)
    assert f"line {AGAIN}, column 1: not valid YAML: key 'twin' is given twice" in line
    assert f"(lines {TWIN} and {AGAIN})" in line


def test_cli_refuses_a_huge_file_before_reading_it(station_home: Path) -> None:
    import time

    path = station_home / "recipes" / "bad.yaml"
    with path.open("w") as f:
        f.write(SHIPPED)
        f.truncate(300 << 20)  # 300 MB, sparse
    start = time.perf_counter()
    (line,) = _cli_problems(station_home)
    assert line == (
        f"{path}: file is 314,572,800 bytes; a recipe may be at most 1,048,576 bytes (1 MiB)"
    )
    assert time.perf_counter() - start < 30  # the interpreter start; reading took over 60 s
    path.write_text(SHIPPED)
    with pytest.raises(RecipeError, match="file is 1,048,577 bytes"):  # text given directly
        parse_recipe(SHIPPED + "#" * ((1 << 20) + 1 - len(SHIPPED)), "big.yaml")


def test_an_inherited_poses_file_is_read_beside_its_base(
    station_home: Path, tmp_path: Path
) -> None:
    from station.geometry.pose_plan import poses_file
    from station.recipe import load_recipe as load_for_planning

    base = load_recipe("glassfiber")
    other = tmp_path / "elsewhere" / "variant.yaml"
    other.parent.mkdir()
    other.write_text("extends: glassfiber\nname: variant\n")
    variant = load_recipe(str(other))
    assert variant.robot.poses == base.robot.poses and len(base.robot.poses) > 1
    assert variant.poses_source == base.source
    with pytest.raises(RecipeError, match="belongs to the base recipe"):
        poses_file(variant)  # plan-poses would overwrite the base's plan
    own = tmp_path / "elsewhere" / "own.yaml"
    own.write_text("extends: glassfiber\nname: own\nrobot: {poses_file: own.poses.yaml}\n")
    planning = load_for_planning(str(own), planning=True)
    assert poses_file(planning) == own.parent / "own.poses.yaml"


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("patchcore", {"coreset_ratio": 5.0}, "patchcore: coreset_ratio must be in (0, 1]"),
        ("patchcore", {"num_neighbors": 0}, "patchcore: num_neighbors must be >= 1, not 0"),
        ("patchcore", {"sigma": -1.0}, "patchcore: sigma must be >= 0, not -1.0"),
        ("simplenet", {"noise_std": 0.0}, "simplenet: noise_std must be > 0, not 0.0"),
        ("efficientad", {"q_low": 0.999}, "efficientad: need 0 < q_low < q_high < 1"),
        ("efficientad", {"model_size": "huge"}, "efficientad: model_size must be small or medium"),
        ("ast_mfr", {"pool_size": 4}, "ast_mfr: pool_size must be odd and >= 1, not 4"),
        ("dfda", {"val_fraction": 1.5}, "dfda: val_fraction must be in [0, 1), not 1.5"),
        (
            "ensemble",
            {"members": [{"name": "patchcore"}, {"name": "dfda", "params": {"k": 0}}]},
            "ensemble: member 2 (dfda): dfda: k must be",
        ),
        ("ensemble", {"members": [{"name": "patchcore"}]}, "ensemble: needs at least two members"),
    ],
)
def test_detector_params_out_of_range_are_refused_before_any_model_is_built(
    name: str, params: dict[str, object], expected: str
) -> None:
    from station.detectors.registry import config_problems

    problems = config_problems(name, params)
    assert len(problems) == 1 and problems[0].startswith(expected), problems
    if name != "ensemble":  # an ensemble has no default members
        assert config_problems(name, {}) == []  # the defaults are in range


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("patchcore", {"num_neighbors": -3}, "patchcore: num_neighbors must be >= 1, not -3"),
        ("simplenet", {"margin": -1.0}, "simplenet: margin must be > 0, not -1.0"),
        ("efficientad", {"distill_batch": 0}, "efficientad: distill_batch must be >= 1, not 0"),
        ("ast_mfr", {"student_lr": 0.0}, "ast_mfr: student_lr must be > 0, not 0.0"),
        ("dfda", {"attention_lr": 0.0}, "dfda: attention_lr must be > 0, not 0.0"),
    ],
)
def test_a_range_error_names_only_the_fields_out_of_range(
    name: str, params: dict[str, object], expected: str
) -> None:
    from station.detectors.registry import config_problems

    assert config_problems(name, params) == [expected]


def test_a_recipe_range_error_names_only_the_field_out_of_range(station_home: Path) -> None:
    assert "num_neighbors: 9" in SHIPPED
    problems = _cli_problems(station_home, SHIPPED.replace("num_neighbors: 9", "num_neighbors: -3"))
    assert problems == [
        f"{station_home / 'recipes' / 'bad.yaml'}: detectors[0].params: patchcore: "
        "num_neighbors must be >= 1, not -3"
    ], problems


def test_recipe_check_ends_with_every_detector_param_problem(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two values out of range: one line each, and no coverage block before them."""
    from test_cellcal import run

    text = SHIPPED.replace("coreset_ratio: 0.03", "coreset_ratio: 0")
    path = station_home / "recipes" / "bad.yaml"
    path.write_text(text.replace("num_neighbors: 9", "num_neighbors: -3"))
    code, out, err = run(capsys, "recipe", "check", "bad")
    assert code == 2 and "Traceback" not in err
    assert "coverage" not in out and "camera model" not in out, out
    lines = [line.strip() for line in err.strip().splitlines()]
    assert lines[-2:] == [
        f"{path}: detectors[0].params: patchcore: coreset_ratio must be in (0, 1], not 0",
        f"{path}: detectors[0].params: patchcore: num_neighbors must be >= 1, not -3",
    ], err


def test_the_summary_shows_every_line_contract_signal(station_home: Path) -> None:
    from station.cli.recipe import line_io_summary

    text = line_io_summary(load_recipe("glassfiber-emulated"))
    wired = ("reject output DO0, part present DI0, heartbeat (every 0.25 s) DO1, "
             "RESULT_VALID DO2, part id input_int_register_18, release off")  # fmt: skip
    assert text.startswith(wired) and "1 s for a heartbeat toggle" in text
    off = load_recipe("glassfiber-emulated")
    off = off.model_copy(update={"line_io": off.line_io.model_copy(
        update={"heartbeat_output": None, "part_id_register": None})})  # fmt: skip
    assert "heartbeat (every 0.25 s) off" in line_io_summary(off)
    assert "part id off" in line_io_summary(off)


@pytest.mark.parametrize("url", ["notaurl", "postgresql+psycopg://u@host:notaport/x"])
def test_a_database_url_that_does_not_parse_is_refused(
    station_home: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """`station recipe check` says what every database command would (parsed, not connected)."""
    from test_cellcal import run

    (station_home / "recipes" / "bad.yaml").write_text(
        yaml.safe_dump({"extends": "glassfiber", "name": "bad", "storage": {"database_url": url}})
    )
    code, _, err = run(capsys, "recipe", "check", "bad")
    assert code == 2 and "Traceback" not in err
    assert f"storage.database_url: database URL {url!r} is not valid" in err, err
    pg = "postgresql+psycopg://u:p@db.invalid/x"  # parsed only: no server is asked
    assert "database_url: sqlite:///data/station.db" in SHIPPED
    text = SHIPPED.replace("database_url: sqlite:///data/station.db", f"database_url: {pg}")
    assert parse_recipe(text).storage.database_url == pg


def test_a_ur_robot_without_its_payload_is_said() -> None:
    from station.cli.recipe import device_warnings

    def real(payload: float | None):  # noqa: ANN202
        def edit(d: dict) -> None:
            d["backend"] = "real"
            d["robot"]["payload_kg"] = payload
        return parse_recipe(_mutated(edit))

    assert any("robot.payload_kg not set" in w for w in device_warnings(real(None)))
    assert not any("payload" in w for w in device_warnings(real(1.2)))
    assert not any("payload" in w for w in device_warnings(parse_recipe(SHIPPED)))
