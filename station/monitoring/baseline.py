"""The drift charts' centre lines and sigmas, from the calibration's good parts.

A threshold calibration keeps the part scores it rests on (`calibration/history/..._scores.csv`:
part, label, each detector's raw part score, combined, rejected) and names the folder whose
images it scored (`dataset`). The good parts it passed (label good, not rejected) give:
- `score <detector>`: the mean and standard deviation of score / threshold;
- `<stat> <pose>`: those of each image statistic, measured on the parts' stored shots
  (`test/good/p<sequence>_<pose>.png` in that folder).
A signal with fewer than `min_parts` such parts gets no baseline here (the monitor then takes
it from a warm-up). Nothing is computed from the defective parts.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import cv2

from station.monitoring.drift import SCORE_PREFIX, Baseline
from station.monitoring.imagestats import image_stats


def _path(p: str, home: Path) -> Path:
    path = Path(p)
    return path if path.is_absolute() else home / path


def _mean_sd(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def passed_good_scores(doc: dict[str, Any], home: Path) -> dict[str, dict[str, float]]:
    """part id -> {detector: score / threshold} of the calibration's passed good parts."""
    scores = doc.get("scores") or ""
    thresholds = doc.get("thresholds") or {}
    path = _path(scores, home) if scores else None
    if path is None or not path.is_file():
        return {}
    out: dict[str, dict[str, float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row.get("label") != "good" or row.get("rejected") != "0":
                continue
            out[row["part"]] = {
                d: float(row[d]) / float(t) for d, t in thresholds.items() if row.get(d)
            }
    return out


def calibration_baselines(
    doc: dict[str, Any], home: Path, poses: list[str], min_parts: int
) -> tuple[dict[str, Baseline], list[str]]:
    """(signal -> baseline, notes in words) from a calibration document (its YAML)."""
    cal = f"calibration {doc.get('id') or '(no record)'}"
    parts = passed_good_scores(doc, home)
    notes: list[str] = []
    values: dict[str, list[float]] = {}
    for scores in parts.values():
        for det, v in scores.items():
            if math.isfinite(v):
                values.setdefault(SCORE_PREFIX + det, []).append(v)
    folder = _path(str(doc.get("dataset") or ""), home) / "test" / "good"
    shots = 0
    if doc.get("dataset") and folder.is_dir():
        for part in sorted(parts):
            for pose in poses:
                img = cv2.imread(str(folder / f"{part}_{pose}.png"), cv2.IMREAD_UNCHANGED)
                if img is None:
                    continue
                shots += 1
                for stat, v in image_stats(img).items():
                    values.setdefault(f"{stat} {pose}", []).append(v)
    out: dict[str, Baseline] = {}
    for name, vals in sorted(values.items()):
        if len(vals) >= max(2, min_parts):
            m, sd = _mean_sd(vals)
            out[name] = Baseline(m, sd, len(vals), f"{cal}: {len(vals)} passed good parts")
    notes.append(
        f"baselines from {cal}: {len(parts)} passed good parts, {shots} of their shots found"
        f" in {folder}; {len(out)} signals" if parts else
        f"{cal} lists no passed good parts (its scores file is missing, or it was made from "
        "reviews): every signal's limits come from a warm-up"
    )
    return out, notes
