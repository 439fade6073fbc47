"""`station demo`'s summary counts, against parts written by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from station.cli.demo import _outcome, _print_summary
from station.recipe import load_recipe
from station.storage.db import open_database
from station.storage.models import SheetDefectRow, Verdict


def _region(x: float, y: float, box: list[float] | None = None) -> SheetDefectRow:
    return SheetDefectRow(index=0, detector="patchcore", x_mm=x, y_mm=y, area_mm2=4.0, peak=1.5,
                          box_mm=box)


def _twin(*boxes: tuple[float, float, float, float]) -> list[dict]:
    return [{"kind": "stain", "size_mm": 4.0, "centre_mm": [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2],
             "bbox_mm": list(b)} for b in boxes]


def test_outcome_counts_live_parts_against_the_twin_truth(station_home: Path) -> None:
    recipe = load_recipe("glassfiber")
    db = open_database(recipe.storage.resolved_database_url())
    box, other = (100.0, 100.0, 104.0, 104.0), (200.0, 50.0, 203.0, 52.0)
    near, short = _region(60, 102, [20, 90, 98.5, 110]), _region(101, 101, [90, 90, 97.5, 97.5])
    rows = [  # (mode, verdict, ground truth, cycle ms, twin defects, sheet-map regions)
        ("live", Verdict.PASS, "good", 1000.0, [], []),  # 1: before the run: not counted
        ("live", Verdict.PASS, "good", 2000.0, [], []),
        ("live", Verdict.FAIL, "good", 3000.0, [], [_region(100, 100)]),  # a false reject
        ("live", Verdict.FAULT, "good", None, [], []),  # a fault on a good sheet: also one
        # caught at its defect: a region stored without its extent, its centre 1.9 mm beyond
        # the box's side
        ("live", Verdict.FAIL, "defect", 4000.0, _twin(box), [_region(105.9, 102)]),
        # caught elsewhere only: its centre 2.1 mm beyond the box
        ("live", Verdict.FAIL, "defect", 4000.0, _twin(box), [_region(97.9, 102)]),
        # caught at its defect: a large region, its centre far off, its extent 1.5 mm short
        ("live", Verdict.FAIL, "defect", 4000.0, _twin(box), [near]),
        # caught elsewhere only: its extent 2.5 mm short, its centre (wrongly) in the box
        ("live", Verdict.FAIL, "defect", 4000.0, _twin(box), [short]),
        # two defects, a region on the second only
        ("live", Verdict.FAIL, "defect", 4000.0, _twin(box, other), [_region(201, 51)]),
        ("live", Verdict.FAULT, "defect", None, _twin(box), []),  # rejected: caught, by a fault
        ("live", Verdict.PASS, "defect", 5000.0, _twin(box), [_region(101, 101)]),  # a miss
        ("live", Verdict.INTERRUPTED, "defect", None, _twin(box), []),  # not rejected: a miss
        ("live", Verdict.FAULT, None, None, None, []),  # faulted before any shot: no truth
        ("offline", Verdict.PASS, "defect", 9000.0, _twin(box), []),  # not live: not counted
    ]
    for mode, verdict, truth, cycle, twin, regions in rows:
        db.create_part(recipe.name, mode=mode, verdict=verdict, ground_truth=truth,
                       timings_ms={"cycle": cycle} if cycle else {}, twin_defects=twin,
                       sheet_defects=regions)
    db.create_part("other", mode="live", verdict=Verdict.PASS, ground_truth="defect")
    db.dispose()
    out = _outcome(recipe, since_sequence=1)
    assert out == {
        "parts": 12, "good": 3, "defect": 8, "no_truth": 1, "false_rejects": 2, "misses": 2,
        "faults": 3, "at_defect": 3, "defects": 9, "defects_found": 3,
        "mean_cycle_ms": pytest.approx((2000 + 3000 + 4000 * 5 + 5000) / 8),
    }


def test_summary_says_what_it_counts(station_home: Path) -> None:
    from rich.console import Console

    recipe = load_recipe("glassfiber")
    console = Console(record=True, width=200)
    out = {"parts": 5, "good": 3, "defect": 1, "no_truth": 1, "false_rejects": 1, "misses": 0,
           "faults": 1, "at_defect": 1, "defects": 2, "defects_found": 1, "mean_cycle_ms": 2500.0}
    _print_summary(console, recipe, out, 0.25)
    text = console.export_text()
    assert "3 good, 1 defective" in text and "1 faulted before any shot" in text
    lo, hi = recipe.twin.defect_size_mm
    assert f"defects {lo:g}-{hi:g} mm, the smallest that matters 2 mm" in text
    assert "false rejects: 1/3 (33%)   missed defects: 0/1 (0%)   faults: 1" in text
    assert ("caught at the defect: 1 of 1 rejected defective sheets (a sheet-map region at "
            "threshold within 2 mm of a twin defect's drawn box); 0 elsewhere only or by a fault"
            ) in text
    assert "twin defects with a region on them: 1/2 (every defect" in text
    assert "2.50 s per sheet" in text


def test_a_bad_sheet_size_names_the_option(
    station_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from station.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--sheet-mm", "0", "0"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: --sheet-mm 0 0: sheet.width_mm"), err
    assert "Traceback" not in err
