"""Free disk space: warnings before the data disk fills, at the last hour's rate."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_inspection_live import _cell

import station.monitoring.disk as diskmod
from station.inspection.disk_hook import disk_hook
from station.monitoring.disk import GB, MB, Disk, DiskWatch, disks, folder_bytes


def _fixed(monkeypatch: pytest.MonkeyPatch, free: list[float]) -> None:
    """Every disk query sees one disk whose free bytes are the next value of `free`."""
    values = iter(free)
    monkeypatch.setattr(
        diskmod, "disks", lambda paths: [Disk(Path("/data"), int(next(values)), int(500 * GB))]
    )


def test_low_free_space_warns_once_then_each_repeat_while_low(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fixed(monkeypatch, [9 * GB, 4 * GB, 3.9 * GB, 3.8 * GB, 7 * GB, 4 * GB])
    watch = DiskWatch([Path("/data")], warn_free_gb=5, warn_hours=0, repeat_s=100)
    assert watch.observe(None, 0.0) == []  # 9 GB: room
    (line,) = watch.observe(None, 10.0)  # 4 GB: the first warning
    assert line.startswith("disk of /data: 4.0 GB free of 500 GB; free space or move old")
    assert "every sheet is rejected as a fault" in line
    assert watch.observe(None, 50.0) == []  # still low, warned 40 s ago
    assert len(watch.observe(None, 110.0)) == 1  # still low, 100 s on: again
    assert watch.observe(None, 120.0) == []  # 7 GB: room again
    assert len(watch.observe(None, 121.0)) == 1  # low again: a new warning at once


def test_the_rate_warns_before_the_free_space_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts of 2 MB every 2 s (1 800 sheets/h, 3.6 GB/h): 20 GB last 5.6 h, under a shift."""
    _fixed(monkeypatch, [20 * GB] * 6)
    watch = DiskWatch([Path("/data")], warn_free_gb=5, warn_hours=8)
    lines = [watch.observe(int(2 * MB), 2.0 * i) for i in range(6)]
    assert lines[:4] == [[], [], [], []]  # fewer than 5 parts: no rate yet, 20 GB is room
    (line,) = lines[4]
    assert "20.0 GB free" in line
    assert "about 5.6 h (10,000 sheets at 2.00 MB per sheet, 1,800 sheets/h)" in line
    assert lines[5] == []  # warned already


def test_the_rate_is_the_last_hours_so_a_weekend_stop_does_not_hide_a_filling_disk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """10 sheets a minute apart, a 60 h stop, then 600 sheets/h of 50 MB: 200 GB last 6.7 h.
    Over the whole run that would be under one sheet an hour, and no warning."""
    _fixed(monkeypatch, [200 * GB] * 16)
    watch = DiskWatch([Path("/data")], warn_free_gb=5, warn_hours=8)
    before = [watch.observe(int(50 * MB), 60.0 * i) for i in range(10)]  # 60 sheets/h: 67 h
    assert before == [[]] * 10
    assert watch.rate(540.0) == (50 * MB, 60.0)
    monday = 540.0 + 60 * 3600
    after = [watch.observe(int(50 * MB), monday + 6.0 * i) for i in range(6)]
    assert after[:4] == [[]] * 4  # the stop emptied the window: no rate until 5 parts again
    (line,) = after[4]
    assert "about 6.7 h (4,000 sheets at 50.00 MB per sheet, 600 sheets/h)" in line
    assert after[5] == []  # warned already
    assert diskmod.sheets_per_hour([0.0, 6.0, 12.0, 18.0]) is None  # fewer than 5 parts


def test_sizes_read_at_every_scale() -> None:
    assert [diskmod.size(b) for b in (3.14 * MB, 4.2 * GB, 500 * GB)] == [
        "3.1 MB", "4.2 GB", "500 GB"]  # fmt: skip


def test_disks_folds_paths_on_one_disk_and_counts_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"1" * 1000)
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "y.npy").write_bytes(b"2" * 24)
    found = disks([tmp_path / "a", tmp_path / "not" / "made" / "yet"])
    assert len(found) == 1 and found[0].path == tmp_path / "a"
    assert 0 < found[0].free <= found[0].total
    assert folder_bytes(tmp_path / "a") == 1024 and folder_bytes(tmp_path / "none") == 0


def test_a_live_run_says_the_free_space_and_warns_when_low(station_home: Path) -> None:
    """On the twin, with a floor above any real disk: the start names the disk and warns, the
    parts after it do not repeat the warning within the hour."""
    cell = _cell(station_home, monitoring={"disk": {"warn_free_gb": 1e6}})
    hook = disk_hook(cell.recipe)
    assert hook is not None
    db_folder = station_home / "data"
    assert set(hook.watch.paths) == {cell.recipe.data_dir, cell.recipe.data_dir / "journal",
                                     db_folder}  # fmt: skip
    cell.cycle_hooks = [hook]
    summary = cell.run(3)
    assert summary.parts == 3
    said = [e for e in cell.events if e.kind == "message" and e.text.startswith("disk of ")]
    assert said[0].level == "info" and "GB free of" in said[0].text
    warned = [e for e in said if e.level == "warning"]
    assert len(warned) == 1 and "free space or move old images" in warned[0].text
    assert said.index(warned[0]) == 1  # at the start, before any part
    assert hook.watch.parts == 3 and all(b > 0 for b in hook.watch.part_bytes)


def test_off_in_the_recipe(station_home: Path) -> None:
    from test_inspection_support import small_recipe

    assert disk_hook(small_recipe(station_home, monitoring={"disk": {"enabled": False}})) is None
