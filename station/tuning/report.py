"""What `station tune` writes: the ranking, `tune.md`, the chosen configuration's score
histogram (`chosen_histogram.png`) and the recipe variant (`<recipe>-tuned.yaml`).

The rule (docs/tune.md): candidates are ranked by image AUROC of synthetic defects against the
held-out good images, ties broken by the lower false-reject rate at 100 % recall on the
synthetic defects, then by the higher throughput. The choice: among the candidates within
AUROC_MARGIN of the best, those within SPEED_RATIO of the fastest of them count as equally fast,
and the best ranked of these is chosen. With `choose_on="real"` the real-defect AUROC comes
first and the synthetic AUROC breaks ties.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from station.files import atomic_write
from station.paths import station_home
from station.recipe import Recipe
from station.tuning.compare import Gain, paired_gain
from station.tuning.faults import KINDS

CHOOSE_ON = ("synthetic", "real")
# AUROC differences below this are within the noise of ~100 synthetic defects: among the
# candidates this close to the best, the fastest is chosen (an ensemble costs about its
# members' sum, less when they share a backbone pass).
AUROC_MARGIN = 0.005
# Throughputs closer than this ratio are within the timing noise of one machine between runs
# (docs/tune.md): such candidates count as equally fast, and the better ranked one is chosen.
SPEED_RATIO = 1.5
_KIND_LABELS = {
    "scratch": "scratch",
    "speck": "speck",
    "stain": "stain",
    "missing_texture": "missing",
    "fold": "fold",
    "foreign_object": "foreign",
}


def _num(value: Any, default: float) -> float:
    return default if value is None else float(value)


def _speed(record: dict[str, Any]) -> float:
    """Images per second; 0 when unknown or not finite."""
    v = _num(record.get("throughput"), 0.0)
    return v if np.isfinite(v) else 0.0


def sort_key(record: dict[str, Any], choose_on: str) -> tuple[float, ...]:
    """Ascending key: the best candidate first."""
    syn = _num(record.get("auroc"), -1.0)
    fr = _num((record.get("fr100") or {}).get("false_reject_rate"), 2.0)
    speed = _speed(record)
    if choose_on == "real":
        return (-_num(record.get("real_auroc"), -1.0), -syn, fr, -speed)
    return (-syn, fr, -speed)


def _ranked(records: Sequence[dict[str, Any]], choose_on: str) -> list[dict[str, Any]]:
    done = (r for r in records if r.get("status") == "done")
    return sorted(done, key=lambda r: sort_key(r, choose_on))


def _near(done: list[dict[str, Any]], choose_on: str) -> list[dict[str, Any]]:
    """Of `done` (ranked, best first), those within AUROC_MARGIN of the first's AUROC on the
    choice criterion."""
    if not done:
        return done
    crit = "real_auroc" if choose_on == "real" else "auroc"
    best = _num(done[0].get(crit), -1.0)
    return [r for r in done if _num(r.get(crit), -1.0) >= best - AUROC_MARGIN]


def near_best(records: Sequence[dict[str, Any]], choose_on: str) -> list[dict[str, Any]]:
    """The finished candidates the choice is made among, best ranked first: those within
    AUROC_MARGIN of the best AUROC on the choice criterion."""
    return _near(_ranked(records, choose_on), choose_on)


def rank(records: Sequence[dict[str, Any]], choose_on: str) -> list[dict[str, Any]]:
    """Finished candidates, best first (failed ones are left out); the first is the choice:
    of those within AUROC_MARGIN of the best AUROC on the choice criterion, the best ranked
    one whose throughput is within SPEED_RATIO of the fastest of them."""
    done = _ranked(records, choose_on)
    near = _near(done, choose_on)
    if not near:
        return done
    fastest = max(_speed(r) for r in near)
    pick = next(r for r in near if _speed(r) * SPEED_RATIO >= fastest)
    return [pick, *(r for r in done if r is not pick)]


def _f(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _fr(point: dict[str, Any] | None) -> str:
    if not point or point.get("false_reject_rate") is None:
        return "-"
    return (
        f"{point['false_reject_rate']:.3f} ({point['false_rejects']}/{point['n_good']}) "
        f"[{point['ci_low']:.2f}, {point['ci_high']:.2f}]"
    )


def table(ranked: Sequence[dict[str, Any]]) -> list[str]:
    """The candidates' markdown table, in ranking order."""
    kinds = list(KINDS)
    head = ["rank", "candidate", "synthetic AUROC", "FR @ 100 % recall (synthetic)"]
    head += [f"{_KIND_LABELS[k]}" for k in kinds]
    head += ["real AUROC", "images/s", "fit s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(ranked, 1):
        row = [str(i), f"`{r['id']}`", _f(r.get("auroc")), _fr(r.get("fr100"))]
        row += [_f((r.get("per_kind") or {}).get(k)) for k in kinds]
        row += [_f(r.get("real_auroc")), _f(r.get("throughput"), 1), _f(r["fit"]["fit_s"], 1)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_report(out: Path, facts: dict[str, Any], ranked: Sequence[dict[str, Any]]) -> Path:
    """`<out>/tune.md`: what was run on what, the rule, the table and what was left out."""
    h = facts["header"]
    chosen = ranked[0]["id"] if ranked else None
    lines = [
        f"# station tune: recipe {h['recipe']}",
        "",
        f"- good images: {h['n_good']} from `{h['data']}` (test split never read): "
        f"{h['n_fit']} to fit, {h['n_held_out']} held out (seed {h['seed']})",
        f"- synthetic defects from the held-out images: {h['n_synthetic']} "
        f"({', '.join(f'{k} {n}' for k, n in h['synthetic_per_kind'].items())})",
        f"- real defects: {h['n_real']} from `{h['defects']}`"
        if h.get("defects")
        else "- real defects: none given (`--defects`)",
        f"- chosen on: {facts['choose_on']} defects ({RULES[facts['choose_on']]})",
        f"- budget: {facts['budget_min']:g} min; run digest `{h['digest'][:16]}`",
        "",
    ]
    if facts.get("guess"):
        lines += [f"**{facts['guess']}**", ""]
    if chosen:
        lines += [f"**Chosen: `{chosen}`**" + (" (a guess)" if facts.get("guess") else ""), ""]
        lines += [own_line(facts, ranked), ""]
        lines += ["Recipe variant: `" + str(facts.get("variant", "")) + "`", ""]
    else:
        lines += ["**No candidate finished: nothing chosen.**", ""]
    lines += table(ranked)
    lines += [
        "",
        "Per-kind columns: image AUROC of that synthetic kind against the held-out good.",
        "FR: false-reject rate of held-out good images at the threshold that catches every"
        " synthetic defect, with its 95 % Clopper-Pearson interval.",
        "",
    ]
    for label, items in (("Failed", facts.get("failed")), ("Not run", facts.get("skipped"))):
        if items:
            lines += [f"{label}:", ""] + [f"- `{cid}`: {why}" for cid, why in items] + [""]
    path = out / "tune.md"
    atomic_write(path, "\n".join(lines).encode())
    return path


def own_line(facts: dict[str, Any], ranked: Sequence[dict[str, Any]]) -> str:
    """Where the recipe's own detector configuration (facts["own"]) stands against the choice,
    with the choice's gain over it when facts["gain"] (`own_gain`) holds one."""
    own = facts.get("own")
    if not own:
        return "The recipe's own detector is not one of the candidates."
    for i, r in enumerate(ranked, 1):
        if r["id"] == own:
            if i == 1:
                return f"The recipe's own detector, `{own}`, is the choice."
            line = (
                f"The recipe's own detector, `{own}`: rank {i} of {len(ranked)}, synthetic "
                f"AUROC {_f(r.get('auroc'))} (the choice: {_f(ranked[0].get('auroc'))})."
            )
            gain = facts.get("gain")
            return line if gain is None else f"{line} The choice's gain over it: {gain.describe()}."
    # a candidate the budget never reached is in "skipped"; one missing from both was not run
    why = dict([*(facts.get("skipped") or []), *(facts.get("failed") or [])]).get(own)
    why = why or "left out by --only"
    return f"The recipe's own detector, `{own}`, was not scored: {why}."


def own_gain(facts: dict[str, Any], ranked: Sequence[dict[str, Any]]) -> Gain | None:
    """The choice's synthetic AUROC gain over the recipe's own candidate; None when the own
    one is the choice or was not scored, or the choice was made on real defects."""
    own = facts.get("own")
    mine = next((r for r in ranked[1:] if r["id"] == own), None)
    if mine is None or facts.get("choose_on") == "real":
        return None
    return paired_gain(ranked[0], mine)


_PICK = (
    f"then, of the candidates within {AUROC_MARGIN} AUROC of it, the fastest is chosen "
    f"(throughputs within {SPEED_RATIO}x of the fastest count as equal: the better ranked wins; "
    "each of these candidates is timed twice more, in turns, and its fastest pass counts)"
)
RULES = {
    "synthetic": "highest synthetic-defect image AUROC (ties: lower false-reject rate at 100 % "
    f"recall); {_PICK}",
    "real": "highest real-defect image AUROC (ties: synthetic AUROC, then false-reject rate); "
    f"{_PICK}",
}


def write_histogram(path: Path, record: dict[str, Any]) -> Path:
    """Good against synthetic-defect score histograms of one candidate, threshold marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    scores = record["scores"]
    good, syn = np.asarray(scores["good"]), np.asarray(scores["synthetic"])
    real = np.asarray(scores.get("real") or [])
    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.subplots()
    every = np.r_[good, syn, real]
    bins = np.linspace(float(every.min()), float(every.max()) + 1e-9, 40)
    ax.hist(good, bins=bins, alpha=0.6, color="C0", label=f"held-out good ({len(good)})")
    ax.hist(syn, bins=bins, alpha=0.6, color="C3", label=f"synthetic defects ({len(syn)})")
    if len(real):
        ax.hist(real, bins=bins, histtype="step", lw=1.5, color="k", label=f"real ({len(real)})")
    t = (record.get("fr100") or {}).get("threshold")
    if t is not None:
        ax.axvline(float(t), color="k", ls="--", lw=1, label="100 % recall threshold")
    ax.set_xlabel("image score")
    ax.set_ylabel("images")
    ax.set_title(f"{record['id']}: AUROC {_f(record.get('auroc'))}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())
    return path


def extends_ref(recipe: Recipe) -> str:
    """How a variant names its base: the name when it is a station recipe, else its path."""
    source = Path(recipe.source).resolve()
    home_copy = (station_home() / "recipes" / f"{recipe.name}.yaml").resolve()
    return recipe.name if source == home_copy and source.stem == recipe.name else str(source)


def variant_text(recipe: Recipe, record: dict[str, Any], note: str) -> str:
    """A recipe that extends `recipe` and runs the chosen detector entry."""
    entry = {k: v for k, v in record["entry"].items() if v is not None}
    body = {
        "extends": extends_ref(recipe),
        "name": f"{recipe.name}-tuned",
        "description": f"{recipe.name} with the detector chosen by station tune ({record['id']})",
        "detectors": [entry],
    }
    if record.get("size"):
        body["preprocess"] = {"size": [int(v) for v in record["size"]]}
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    head = f"# Written by station tune on {stamp}: {note}\n"
    return head + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)
