"""The shipped recipe end to end, as shipped: capture, train, calibrate and inspect live through
recipes/glassfiber.yaml's 3 x 3 raster, 8 mm lens and native 256 px tiles, one sheet each. The
other flow tests use small recipes for speed (tests/test_inspection_support.py `small_recipe`,
tests/test_twin_render.py `classic`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from station.cli.app import main
from station.detectors.artifact import read_artifact
from station.recipe import load_recipe
from station.storage.db import open_database
from station.storage.models import Part, Verdict


def _set(home: Path, **twin: object) -> None:
    path = home / "recipes" / "glassfiber.yaml"
    data = yaml.safe_load(path.read_text())
    data["twin"].update(twin)
    # the one change beyond the twin: PatchCore pools fewer training patches (a smaller bank,
    # for CPU test time); poses, lens, sheet, coverage, tiling and decision are the shipped ones
    data["detectors"][0]["params"]["max_train_patches"] = 8000
    # one training sheet is too few for the material check (its threshold needs part-to-part
    # variation: docs/material_check.md), so it would fault the inspected sheet: off here
    data.setdefault("monitoring", {})["material_check"] = {"enabled": False}
    path.write_text(yaml.safe_dump(data))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_capture_train_calibrate_inspect_on_the_shipped_raster(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _set(station_home, time_scale=0.0)
    main(["capture", "-r", "glassfiber", "--count", "1", "--label", "good"])
    main(["train", "-r", "glassfiber"])
    for rate, seed in ((0.0, 11), (1.0, 12)):  # one good and one defective labelled sheet
        _set(station_home, time_scale=0.0, defect_rate=rate)
        main(["capture", "-r", "glassfiber", "--count", "1", "--label", "labelled", "--seed",
              str(seed)])
    main(["calibrate-threshold", "-r", "glassfiber", "--resamples", "100", "--oob-resamples", "0"])
    main(["inspect", "--live", "-r", "glassfiber", "-n", "1", "--no-view"])
    assert "1 part(s)" in capsys.readouterr().out

    recipe = load_recipe("glassfiber")
    poses = [p.name for p in recipe.robot.poses]
    assert recipe.preprocess.tiling.enabled and len(poses) == len(set(poses)) > 1
    (model,) = (recipe.data_dir / "models" / "patchcore").glob("*.pt")
    meta = read_artifact(model)["meta"]
    assert meta["n_train_images"] == len(poses) and meta["good_scores_per"] == "tile"
    doc = yaml.safe_load(recipe.calibration_path.read_text())
    assert doc["counts"] == {"good": 1, "defect": 1, "shots": 2 * len(poses)}

    db = open_database(recipe.storage.resolved_database_url())
    try:
        with db.session() as s:
            (part,) = s.scalars(
                select(Part).where(Part.mode == "live").options(selectinload(Part.shots))
            ).all()
            # one training sheet: the verdict itself is not a measure, its consistency is
            assert part.verdict in (Verdict.PASS, Verdict.FAIL)
            assert (part.verdict is Verdict.FAIL) == (part.part_score >= 1.0)
            assert (part.ground_truth == "defect") == bool(part.twin_defects)
            shots = sorted(part.shots, key=lambda sh: sh.pose_index)
            assert [sh.pose_name for sh in shots] == poses
            assert part.sheet_map_path and (recipe.data_dir.parent / part.sheet_map_path).is_file()
            x0, y0, x1, y1 = part.sheet_map_extent_mm  # the whole sheet is on the map
            assert x1 - x0 >= recipe.sheet.width_mm and y1 - y0 >= recipe.sheet.height_mm
    finally:
        db.dispose()
