"""tools/tune_rules.py: the tune's margin rule against keeping the recipe's own candidate
unless it is beaten beyond the synthetic set's noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tool_module import load_tool

SHIPPED = Path(__file__).parents[1] / "recipes" / "glassfiber.yaml"


def record(cid: str, shift: float, speed: float, seed: int, jitter: float = 0.0) -> dict:
    """A finished candidate whose synthetic scores sit `shift` above its 60 good ones; the
    same `seed` draws the same images, `jitter` adds this candidate's own noise to them."""
    rng = np.random.default_rng(seed)
    good = rng.normal(0, 1, 60)
    bad = rng.normal(shift, 1, 120)
    noise = np.random.default_rng(seed + 100)
    good, bad = good + noise.normal(0, jitter, 60), bad + noise.normal(0, jitter, 120)
    auroc = float((bad[:, None] > good[None, :]).mean())
    return {
        "type": "candidate",
        "id": cid,
        "status": "done",
        "auroc": auroc,
        "fr100": {},
        "throughput": speed,
        "scores": {"good": good.tolist(), "synthetic": bad.tolist(), "real": []},
    }


def write_tune(folder: Path, rows: list[dict], real: dict[str, float]) -> Path:
    folder.mkdir(parents=True)
    header = {"type": "run", "recipe_source": str(SHIPPED)}
    lines = [json.dumps(header), *(json.dumps(r) for r in rows)]
    (folder / "tune.jsonl").write_text("\n".join(lines) + "\n")
    check = folder / "check.json"
    check.write_text(json.dumps({"rows": [{"id": k, "real": v} for k, v in real.items()]}))
    return check


def test_keep_own_keeps_the_recipe_unless_clearly_beaten(tmp_path: Path) -> None:
    tool = load_tool("tune_rules")
    own = "patchcore-lite1"  # the shipped glassfiber recipe's own candidate
    # The same images, a nose ahead of the recipe's own on synthetic defects, and faster.
    rows = [record(own, 1.5, 10.0, 1), record("patchcore-lite0", 1.75, 20.0, 1, jitter=0.4)]
    real = {own: 0.90, "patchcore-lite0": 0.80}
    check = write_tune(tmp_path / "close", rows, real)
    out = tmp_path / "rules.json"
    args = ["--check", str(check), "--json", str(out), "--tune"]
    assert tool.main([*args, str(tmp_path / "close")]) == 0
    got = json.loads(out.read_text())
    assert got["own"] == own and got["beat_own"] == []
    assert got["rules"]["margin"]["pick"] == "patchcore-lite0"  # fastest within 0.005
    assert got["rules"]["keep-own"] == {"pick": own, "real": 0.90, "gap": 0.0}
    # Far ahead: keep-own follows the tune's rule among the candidates that beat it.
    rows.append(record("patchcore-lite2", 3.5, 5.0, 2))
    real["patchcore-lite2"] = 0.95
    args[1] = str(write_tune(tmp_path / "far", rows, real))
    assert tool.main([*args, str(tmp_path / "far")]) == 0
    got = json.loads(out.read_text())
    assert got["beat_own"] == ["patchcore-lite2"]
    assert got["rules"]["keep-own"]["pick"] == "patchcore-lite2"
    assert got["rules"]["margin"]["gap"] == 0.0

