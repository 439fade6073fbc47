"""`<out>/tune.jsonl`: one header line, then one line per finished candidate, and one `timing`
line per candidate timed again at the end (its extra passes; `throughput` becomes the fastest
pass: run.retime).

The header holds the run digest (recipe, good images, real defects, seed, split and synthetic
rules: `data.run_digest`). A rerun with the same `--out` and the same digest skips the
candidates already in the file; a different digest starts the file over, and the caller says
so. Each line is written and flushed as its candidate finishes, so an interrupted run loses at
most the candidate it was on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from station.files import writing

FILE = "tune.jsonl"


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def read_journal(out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(header, candidate records) of `<out>/tune.jsonl`; None when there is no tune journal."""
    path = out / FILE
    if not path.is_file():
        return None
    rows = []
    for line in path.read_text(errors="replace").splitlines():  # garbage: not a journal
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by an interrupted run
            continue
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows or rows[0].get("type") != "run":
        return None
    records = {r["id"]: r for r in rows[1:] if r.get("type") == "candidate" and "id" in r}
    for t in rows[1:]:
        if t.get("type") == "timing" and t.get("id") in records:
            records[t["id"]] = with_passes(records[t["id"]], t.get("passes") or [])
    return rows[0], list(records.values())


def with_passes(record: dict[str, Any], extra: list[float]) -> dict[str, Any]:
    """`record` with `extra` timed passes added: `throughput_passes` lists every pass (the first
    is the candidate's own scoring) and `throughput` is the fastest."""
    passes = [*(record.get("throughput_passes") or [record.get("throughput")]), *extra]
    finite = [float(v) for v in passes if v is not None and math.isfinite(float(v))]
    return {
        **record,
        "throughput_passes": passes,
        "throughput": max(finite) if finite else record.get("throughput"),
    }


class Journal:
    """The candidates finished for one digest, appended to as new ones finish."""

    def __init__(self, out: Path, header: dict[str, Any]) -> None:
        self.path = out / FILE
        self.header = header
        self.records: dict[str, dict[str, Any]] = {}
        self.restarted_from: str | None = None  # the old digest when the file was started over

    def open(self) -> Journal:
        """Read what an earlier run with this digest finished; start over on another digest
        (or on a file that is not a tune journal)."""
        old = read_journal(self.path.parent)
        if old is not None and old[0].get("digest") == self.header["digest"]:
            self.records = {r["id"]: r for r in old[1]}
            return self
        if old is not None or self.path.exists():
            self.restarted_from = str((old[0] if old else {}).get("digest") or "unreadable")
        with writing(f"tune folder {self.path.parent} (--out)"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(_plain({"type": "run", **self.header})) + "\n")
        self.records = {}
        return self

    def add(self, record: dict[str, Any]) -> None:
        """Append one finished candidate (and keep it in `records`)."""
        row = _plain({"type": "candidate", **record})
        self._append(row)
        self.records[record["id"]] = row

    def add_passes(self, cid: str, passes: list[float]) -> None:
        """Append more timed passes of a finished candidate (images per second)."""
        self._append(_plain({"type": "timing", "id": cid, "passes": passes}))
        self.records[cid] = with_passes(self.records[cid], passes)

    def _append(self, row: dict[str, Any]) -> None:
        with writing(self.path), self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()

    @property
    def resumed(self) -> int:
        return len(self.records)
