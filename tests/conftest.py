"""Shared fixtures: a scratch station home, and a real PostgreSQL server when one is installed.

CI (`.ci/run`) sets STATION_CI=1: there a test that skips fails instead, unless it needs a GPU
(CI has none) or root, so a broken install (no PostgreSQL, no Chromium, a missing package)
cannot pass by running fewer tests.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# CI has no GPU; a tmpfs (the full-disk tests) needs root, and as root a failed mount fails
SKIPS_ALLOWED_IN_CI = ("needs a CUDA GPU",) + (() if os.geteuid() == 0 else ("(needs root)",))


def _no_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under STATION_CI=1 a skip is a failure, unless its reason is one CI may have."""
    if not (report.skipped and os.environ.get("STATION_CI")) or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = str(longrepr[-1] if isinstance(longrepr, tuple) else longrepr)
    if not any(allowed in reason for allowed in SKIPS_ALLOWED_IN_CI):
        report.outcome = "failed"
        report.longrepr = f"skipped under STATION_CI=1 (CI must run every test): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    _no_skip_in_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A module-level importorskip skips at collection, before any test report: the same rule."""
    outcome = yield
    _no_skip_in_ci(outcome.get_result())


@pytest.fixture
def station_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty station home with the shipped recipes, set as $STATION_HOME."""
    home = tmp_path / "home"
    shutil.copytree(REPO / "recipes", home / "recipes")
    (home / "calibration").mkdir()
    monkeypatch.setenv("STATION_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of tiny-model tests (faster, above all on a loaded machine)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a throwaway PostgreSQL server on loopback, started for this test session.

    Skips when no server binary is installed (CI installs one). Its data folder
    is a private temporary folder, not pytest's: another pytest session started meanwhile
    prunes older pytest folders, and would delete the running server's files.
    """
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binary installed (apt-get install postgresql)")
    pytest.importorskip("psycopg")
    root = Path(tempfile.mkdtemp(prefix="station-pg-"))
    datadir, sockdir = root / "data", root / "sock"
    sockdir.mkdir()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(root, "postgres")
        shutil.chown(sockdir, "postgres")
        root.chmod(0o755)
        for parent in root.parents:  # the server user must reach its data folder
            if parent == Path("/"):
                break
            with contextlib.suppress(PermissionError):
                parent.chmod(parent.stat().st_mode | 0o711)
    subprocess.run(
        [*run_as, str(bindir / "initdb"), "-D", str(datadir), "-U", "station", "-A", "trust"],
        check=True,
        capture_output=True,
    )
    port = _free_port()
    log = root / "server.log"
    subprocess.run(
        [
            *run_as,
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-l",
            str(log),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {sockdir}",
            "start",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    url = f"postgresql+psycopg://station@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        subprocess.run(
            [*run_as, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "fast", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> Iterator[str]:
    """A new empty database on the session's PostgreSQL server."""
    import sqlalchemy as sa

    name = f"t{time.monotonic_ns()}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
