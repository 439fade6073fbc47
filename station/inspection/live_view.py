"""The operator's live terminal view of a running station (rich), fed by inspection events.

Shows parts inspected, pass/fail/fault counts, the last verdict with each detector's score
against its threshold, the cycle-time breakdown (last part and mean), throughput and the
latest messages. `LiveView.handle` is the Inspector's `on_event`; `render()` builds the screen.
"""

from __future__ import annotations

import time
from collections import Counter, deque

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from station.decision import fmt_ratio
from station.inspection.results import TIMING_KEYS, Event, PartResult

VERDICT_STYLE = {
    "pass": "bold green",
    "fail": "bold red",
    "fault": "bold magenta",
    "interrupted": "yellow",
    "pending": "dim",
}


def verdict_text(verdict: str) -> Text:
    return Text(verdict.upper(), style=VERDICT_STYLE.get(verdict, ""))


def part_label(r: PartResult) -> str:
    """The part's sequence number; the line's id when the database gave it none (a part
    decided while the database could not take its row)."""
    return str(r.sequence) if r.sequence is not None else (r.line_part_id or "?")


def result_detail(r: PartResult) -> str:
    """A part's one-line detail: a fault's reason (its scores decide nothing), else each
    detector's score as a multiple of its threshold."""
    if r.verdict.value == "fault" or not r.normalized:
        return r.reason
    return ", ".join(f"{n} {fmt_ratio(v)}x" for n, v in r.normalized.items())


def score_bar(ratio: float, width: int = 20) -> Text:
    """A bar with the threshold (1.0) at its middle mark; twice the threshold fills it."""
    if ratio != ratio:  # NaN
        return Text("")
    filled = max(0, min(width, round(ratio / 2.0 * width)))
    style = "red" if ratio >= 1.0 else "green"
    bar = Text()
    for i in range(width):
        if i < filled:
            bar.append("█", style=style)
        else:
            bar.append("│" if i == width // 2 else "·", style="dim")
    return bar


class LiveView:
    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.subtitle = subtitle
        self.counts: Counter[str] = Counter()
        self.parts = 0
        self.started = time.monotonic()
        self.last: PartResult | None = None
        self.sums: dict[str, float] = dict.fromkeys(TIMING_KEYS, 0.0)
        self.messages: deque[tuple[str, str, str]] = deque(maxlen=6)
        self.status = "starting"
        self.stopping = False

    # -- events ---------------------------------------------------------------------------
    def handle(self, event: Event) -> None:
        if event.kind == "part_finished" and event.result is not None:
            r = event.result
            self.parts += 1
            self.counts[r.verdict.value] += 1
            self.last = r
            for k in TIMING_KEYS:
                self.sums[k] += r.timings_ms.get(k, 0.0)
            self.status = f"part {part_label(r)}: {r.verdict.value}"
        elif event.kind == "part_started":
            self.status = f"inspecting {event.text}"
        elif event.kind == "waiting":
            self.status = event.text
            if event.level != "info":
                self.message(event.text, event.level)
        else:
            self.message(event.text, event.level)

    def message(self, text: str, level: str = "info") -> None:
        self.messages.append((time.strftime("%H:%M:%S"), level, text))

    # -- screen ---------------------------------------------------------------------------
    def render(self) -> RenderableType:
        elapsed = time.monotonic() - self.started
        rate = 3600.0 * self.parts / elapsed if elapsed > 0 else 0.0
        counts = Table.grid(padding=(0, 2))
        for _ in range(6):
            counts.add_column()
        counts.add_row(
            Text(f"parts {self.parts}", style="bold"),
            Text(f"pass {self.counts['pass']}", style="green"),
            Text(f"fail {self.counts['fail']}", style="red"),
            Text(f"fault {self.counts['fault']}", style="magenta"),
            Text(f"{rate:.0f} parts/h"),
            Text(f"up {elapsed:.0f} s", style="dim"),
        )
        status = Text(self.status + ("  (stopping after this part)" if self.stopping else ""))
        return Panel(
            Group(counts, status, self._last_part(), self._timings(), self._messages()),
            title=self.title,
            subtitle=self.subtitle,
        )

    def _last_part(self) -> RenderableType:
        r = self.last
        if r is None:
            return Text("no part yet", style="dim")
        head = Text.assemble(
            f"last: part {part_label(r)}  ", verdict_text(r.verdict.value), f"  {r.reason}"
        )
        if r.ground_truth:
            head.append(f"  (twin truth: {r.ground_truth})", style="dim")
        table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
        for col in ("detector", "score", "threshold", "x threshold", ""):
            table.add_column(col, justify="right" if col not in ("detector", "") else "left")
        for name, score in r.scores.items():
            ratio = r.normalized.get(name, float("nan"))
            table.add_row(
                name,
                f"{score:.4g}",
                f"{r.thresholds.get(name, float('nan')):.4g}",
                Text(fmt_ratio(ratio), style="red" if ratio >= 1 else "green"),
                score_bar(ratio),
            )
        return Group(head, table) if r.scores else head

    def _timings(self) -> RenderableType:
        table = Table(box=None, pad_edge=False, header_style="dim", title_justify="left")
        table.add_column("cycle ms")
        for k in TIMING_KEYS:
            table.add_column(k, justify="right")
        if self.last is not None:
            table.add_row("last", *(f"{self.last.timings_ms.get(k, 0):.0f}" for k in TIMING_KEYS))
            n = max(self.parts, 1)
            table.add_row("mean", *(f"{self.sums[k] / n:.0f}" for k in TIMING_KEYS))
        return table

    def _messages(self) -> RenderableType:
        if not self.messages:
            return Text("")
        styles = {"info": "dim", "warning": "yellow", "error": "bold red"}
        return Group(*(Text(f"{t}  {m}", style=styles.get(lvl, "")) for t, lvl, m in self.messages))
