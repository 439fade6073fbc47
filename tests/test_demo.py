"""`station demo`'s summary counts, against parts written by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from station.cli.demo import _outcome, _print_summary
from station.recipe import load_recipe
from station.storage.db import open_database
from station.storage.models import Verdict


def test_outcome_counts_live_parts_against_the_twin_truth(station_home: Path) -> None:
    recipe = load_recipe("glassfiber")
    db = open_database(recipe.storage.resolved_database_url())
    rows = [  # (mode, verdict, ground truth, cycle ms)
        ("live", Verdict.PASS, "good", 1000.0),  # 1: before the run: not counted
        ("live", Verdict.PASS, "good", 2000.0),
        ("live", Verdict.FAIL, "good", 3000.0),  # a false reject
        ("live", Verdict.FAULT, "good", None),  # a fault on a good sheet: also a false reject
        ("live", Verdict.FAIL, "defect", 4000.0),
        ("live", Verdict.FAULT, "defect", None),  # rejected: caught
        ("live", Verdict.PASS, "defect", 5000.0),  # a miss
        ("live", Verdict.INTERRUPTED, "defect", None),  # not rejected by a verdict: a miss
        ("live", Verdict.FAULT, None, None),  # faulted before any shot: no truth
        ("offline", Verdict.PASS, "defect", 9000.0),  # not live: not counted
    ]
    for mode, verdict, truth, cycle in rows:
        db.create_part(recipe.name, mode=mode, verdict=verdict, ground_truth=truth,
                       timings_ms={"cycle": cycle} if cycle else {})
    db.create_part("other", mode="live", verdict=Verdict.PASS, ground_truth="defect")
    db.dispose()
    out = _outcome(recipe, since_sequence=1)
    assert out == {
        "parts": 8, "good": 3, "defect": 4, "no_truth": 1, "false_rejects": 2, "misses": 2,
        "faults": 3, "mean_cycle_ms": pytest.approx((2000 + 3000 + 4000 + 5000) / 4),
    }


def test_summary_says_what_it_counts(station_home: Path) -> None:
    from rich.console import Console

    recipe = load_recipe("glassfiber")
    console = Console(record=True, width=200)
    out = {"parts": 5, "good": 3, "defect": 1, "no_truth": 1, "false_rejects": 1, "misses": 0,
           "faults": 1, "mean_cycle_ms": 2500.0}
    _print_summary(console, recipe, out, 0.25)
    text = console.export_text()
    assert "3 good, 1 defective" in text and "1 faulted before any shot" in text
    lo, hi = recipe.twin.defect_size_mm
    assert f"defects {lo:g}-{hi:g} mm, the smallest that matters 2 mm" in text
    assert "false rejects: 1/3 (33%)   missed defects: 0/1 (0%)   faults: 1" in text
    assert "wherever the rejecting spot lies" in text and "2.50 s per sheet" in text
