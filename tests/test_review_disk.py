"""Free disk space on the review pages (station.review.disk): the warning, the rate from the
last hour's parts and their folders, and nothing while every disk has room."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from test_inspection_support import database

from station.recipe import parse_recipe
from station.review.app import create_app
from station.review.disk import DiskBanner
from station.storage.models import Part, Verdict
from station.storage.parts import part_folder

BASE = "http://127.0.0.1:8080"


def _recipe(home: Path, warn_free_gb: float, warn_hours: float) -> Any:
    data = yaml.safe_load((home / "recipes" / "glassfiber.yaml").read_text())
    data["monitoring"]["disk"] = {"warn_free_gb": warn_free_gb, "warn_hours": warn_hours}
    data["storage"] = {"database_url": f"sqlite:///{home}/data/station.db"}
    path = home / "recipes" / "disk.yaml"
    path.write_text(yaml.safe_dump(data))
    return parse_recipe(path.read_text(), str(path))


def _parts(db: Any, recipe: Any, n: int, minutes: int, nbytes: int) -> None:
    """n live parts started `minutes` apart up to now, each folder holding `nbytes`."""
    start = datetime.now(UTC) - timedelta(minutes=minutes * (n - 1))
    with db.session() as s:
        for k in range(n):
            s.add(Part(recipe=recipe.name, sequence=k + 1, mode="live", verdict=Verdict.FAIL,
                       started_at=start + timedelta(minutes=minutes * k), reason="test"))
            folder = part_folder(recipe, k + 1)
            folder.mkdir(parents=True)
            (folder / "shot.png").write_bytes(b"x" * nbytes)
        s.commit()


def _page(recipe: Any, banner: DiskBanner) -> str:
    client = TestClient(create_app(recipe.storage.resolved_database_url(),
                                   recipe.data_dir.parent, disk=banner), base_url=BASE)
    try:
        return client.get("/").text
    finally:
        client.close()


def test_a_disk_that_fills_within_the_shift_is_said_on_every_page(station_home: Path) -> None:
    # no disk here has 1 000 000 GB free: every page warns, with the last hour's rate
    recipe = _recipe(station_home, warn_free_gb=1e6, warn_hours=8)
    db = database(recipe)
    _parts(db, recipe, 6, minutes=10, nbytes=2_000_000)  # 6 sheets over 50 min, 2 MB each
    banner = DiskBanner(recipe, [recipe.data_dir])
    assert banner.rate(db) == pytest.approx((2_000_000, 6.0), rel=1e-3)
    html = _page(recipe, banner)
    assert 'class="problem disk" role="alert"' in html
    assert "2.00 MB per sheet, 6 sheets/h" in html and "every sheet is rejected" in html
    db.dispose()


def test_no_banner_while_every_disk_has_room_and_no_rate_from_few_parts(
    station_home: Path,
) -> None:
    recipe = _recipe(station_home, warn_free_gb=0.0, warn_hours=0.0)
    db = database(recipe)
    _parts(db, recipe, 4, minutes=10, nbytes=1000)
    banner = DiskBanner(recipe, [recipe.data_dir])
    assert banner.rate(db) is None  # fewer than 5 parts in the last hour
    assert "problem disk" not in _page(recipe, banner)
    db.dispose()


def test_station_review_watches_the_data_journal_and_database_disks(station_home: Path) -> None:
    from station.cli.review import _disk_banner
    from station.storage.journal import journal_folder

    recipe = _recipe(station_home, warn_free_gb=5.0, warn_hours=8.0)
    url = recipe.storage.resolved_database_url()
    banner = _disk_banner(recipe, recipe.data_dir.parent, url)
    assert banner is not None and banner.paths == [
        recipe.data_dir.parent, journal_folder(recipe), station_home / "data"]
    off = recipe.model_copy(update={"monitoring": recipe.monitoring.model_copy(update={
        "disk": recipe.monitoring.disk.model_copy(update={"enabled": False})})})
    assert _disk_banner(off, recipe.data_dir.parent, url) is None


def test_a_database_that_is_down_leaves_the_rate_out(station_home: Path) -> None:
    recipe = _recipe(station_home, warn_free_gb=1e6, warn_hours=8)
    db = database(recipe)
    _parts(db, recipe, 6, minutes=10, nbytes=1000)
    db.dispose()
    (station_home / "data" / "station.db").write_bytes(b"not a database" * 100)  # overwritten
    banner = DiskBanner(recipe, [recipe.data_dir])
    try:
        with pytest.raises(Exception, match="not a database"):
            banner.rate(db)
        (line,) = banner.lines(db)
    finally:
        db.dispose()
    assert "GB free" in line and "sheets/h" not in line
