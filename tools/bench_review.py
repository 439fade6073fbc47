"""Benchmark: review queue latency with 10 000 parts in the database.

Usage: .venv/bin/python tools/bench_review.py [--parts 10000] [--requests 60] [--db-url URL]

Seeds a scratch database (SQLite by default; pass --db-url for an empty PostgreSQL database)
with sample parts (3 shots each, one detection per detector and shot, ~30 % rejected, some
reviewed), starts the real server (`station review` in a child process, uvicorn on 127.0.0.1)
and times HTTP requests with httpx: median and p95 for the queue pages and a part page,
against `/healthz` measured in the same run as the baseline (server + HTTP overhead).
Target from issue 7: the queue page answers in under 200 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from station.review.sample import seed_parts
from station.review.server import free_port
from station.storage.db import open_database


def _time(client: httpx.Client, path: str, n: int) -> tuple[float, float, int]:
    for _ in range(3):  # warm up caches and the connection
        client.get(path).raise_for_status()
    samples = []
    size = 0
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.get(path)
        samples.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
        size = len(r.content)
    samples.sort()
    p95 = samples[min(len(samples) - 1, round(0.95 * (len(samples) - 1)))]
    return statistics.median(samples), p95, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=60, help="timed requests per page (>= 1)")
    ap.add_argument("--reject-rate", type=float, default=0.3, help="share of parts failed")
    ap.add_argument("--db-url", default=None, help="an empty database (default: scratch SQLite)")
    args = ap.parse_args()
    if args.requests < 1 or args.parts < 1:
        ap.error("--parts and --requests must be at least 1")

    with tempfile.TemporaryDirectory() as tmp:
        url = args.db_url or f"sqlite:///{tmp}/bench.db"
        data = Path(tmp) / "data"
        db = open_database(url)
        t0 = time.perf_counter()
        sample = seed_parts(
            db,
            data,
            args.parts,
            detectors=("patchcore", "simplenet"),
            shared_images=True,
            reject_rate=args.reject_rate,
            fault_rate=0.02,
            review_rate=0.4,
            size=(640, 512),
            seed=11,
        )
        db.dispose()
        print(
            f"seeded {args.parts} parts ({len(sample.rejected_ids)} in the review queue, "
            f"{3 * args.parts} shots, {6 * args.parts} detections) in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        port = free_port()
        env = dict(os.environ, STATION_HOME=tmp)
        (Path(tmp) / "recipes").mkdir()
        repo = Path(__file__).resolve().parents[1]
        (Path(tmp) / "recipes/glassfiber.yaml").write_text(
            (repo / "recipes/glassfiber.yaml").read_text()
        )
        cmd = [
            sys.executable,
            "-m",
            "station",
            "review",
            "--port",
            str(port),
            "--db-url",
            url,
            "--data-dir",
            str(data),
        ]
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(base + "/healthz", timeout=1).raise_for_status()
                    break
                except httpx.HTTPError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        out = server.stdout.read().decode() if server.stdout else ""
                        raise SystemExit(f"server did not start:\n{out}") from None
                    time.sleep(0.2)
            if not sample.rejected_ids:
                raise SystemExit(
                    f"none of the {args.parts} seeded parts was rejected, so there is no part "
                    "page to time: seed more parts or raise --reject-rate"
                )
            part = sample.rejected_ids[len(sample.rejected_ids) // 2]
            cases = [
                ("/healthz (baseline)", "/healthz"),
                ("queue, default", "/"),
                ("queue, not reviewed", "/?reviewed=no"),
                ("queue, false rejects", "/?reviewed=false_reject"),
                ("queue, faults, page 2", "/?verdict=fault&page=2"),
                (
                    "queue, recipe + dates, page 20",
                    "/?recipe=glassfiber&date_from=2000-01-01&date_to=2100-01-01&page=20",
                ),
                ("part page", f"/parts/{part}"),
            ]
            print(f"{'request':34s} {'median ms':>10s} {'p95 ms':>8s} {'bytes':>8s}")
            with httpx.Client(base_url=base, timeout=30) as client:
                for name, path in cases:
                    med, p95, size = _time(client, path, args.requests)
                    print(f"{name:34s} {med:10.1f} {p95:8.1f} {size:8d}")
        finally:
            server.terminate()
            server.wait(timeout=20)


if __name__ == "__main__":
    main()
