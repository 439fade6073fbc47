"""The calibration figure: ROC curves with the operating point, and the score distributions.

Left: ROC per detector and for the combined decision (false-reject rate against the share of
defects caught), each chosen threshold marked, with its bootstrap intervals as error bars.
Right: combined part scores of good and defective parts, with the threshold at 1.0.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from station.calibration.core import CalibrationResult, OperatingPoint


def _label(p: OperatingPoint) -> str:
    auc = "" if p.auroc is None else f", AUROC {p.auroc:.3f}"
    return f"{p.name}{auc}"


def render_calibration(result: CalibrationResult) -> bytes:
    """The figure as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5), dpi=110)
    ax, hx = fig.subplots(1, 2)
    points = list(result.detectors.values())
    if len(points) > 1:
        points.append(result.combined)
    have_roc = result.n_good > 0 and result.n_defect > 0
    for i, p in enumerate(points):
        colour = f"C{i}"
        if have_roc:
            # candidates from highest to lowest threshold run from (0, 0) to (1, 1); straight
            # segments between them are exact (tied scores give the diagonal pieces)
            fpr = p.roc.false_reject_rate[::-1]
            tpr = p.roc.true_positive_rate[::-1]
            ax.plot(fpr, tpr, color=colour, lw=1.3, label=_label(p))
        fr, miss = p.false_reject, p.miss
        x = fr.rate if fr.rate is not None else 0.0
        y = 1.0 - miss.rate if miss.rate is not None else 1.0
        xerr = None
        yerr = None
        if fr.ci_low is not None and fr.rate is not None:
            xerr = [[max(x - fr.ci_low, 0.0)], [max(fr.ci_high - x, 0.0)]]
        if miss.ci_low is not None and miss.rate is not None:
            yerr = [[max(miss.ci_high - miss.rate, 0.0)], [max(miss.rate - miss.ci_low, 0.0)]]
        ax.errorbar(
            [x], [y], xerr=xerr, yerr=yerr, fmt="o", color=colour, ms=7, capsize=3, zorder=5
        )
        right = x > 0.6  # keep the label inside the axes
        ax.annotate(
            f"t={p.threshold:.4g}\nFR {fr.rate if fr.rate is not None else float('nan'):.1%}"
            f", miss {miss.rate if miss.rate is not None else float('nan'):.1%}",
            (x, y),
            xytext=(-12 if right else 12, -28 - 24 * i),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=8,
            color=colour,
            arrowprops={"arrowstyle": "-", "color": colour, "lw": 0.6},
        )
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("false-reject rate (good parts rejected)")
    ax.set_ylabel("defects caught (1 - miss rate)")
    ax.set_title(f"{result.recipe}: ROC, policy {result.policy.name}", fontsize=10)
    if have_roc:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(
            0.5,
            0.5,
            "no ROC: the set has only one class\n"
            f"({result.n_good} good, {result.n_defect} defective parts)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )

    _histogram(hx, result)
    fig.tight_layout()

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _scores(point: OperatingPoint, label: int) -> np.ndarray:
    return point.scores_good if label == 0 else point.scores_defect


def _histogram(hx: Any, result: CalibrationResult) -> None:
    """Combined part scores of good and defective parts, with the threshold at 1.0."""
    combined = result.combined
    good = _scores(combined, 0)
    defect = _scores(combined, 1)
    values = np.concatenate([good, defect]) if len(good) + len(defect) else np.array([1.0])
    lo, hi = float(values.min()), float(values.max())
    bins = np.linspace(min(lo, 1.0), max(hi, 1.0), 40) if hi > lo else 20
    if len(good):
        hx.hist(good, bins=bins, alpha=0.6, color="C2", label=f"good ({len(good)})")
    if len(defect):
        hx.hist(defect, bins=bins, alpha=0.6, color="C3", label=f"defective ({len(defect)})")
    hx.axvline(1.0, color="black", ls="--", lw=1, label="threshold (1.0)")
    hx.set_xlabel("combined part score (score / threshold)")
    hx.set_ylabel("parts")
    hx.set_title(
        f"{result.n_good} good, {result.n_defect} defective parts ({result.source})", fontsize=10
    )
    hx.legend(fontsize=8)
