"""The progress bar every long-running command shows."""

from __future__ import annotations

from typing import Any


def make_progress(
    description: str = "{task.description:<28}", unit: str | None = None, console: Any = None
) -> Any:
    """A rich Progress: description, bar, done/total (with `unit`), elapsed and remaining time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if console is None:
        from station.cli.app import console
    columns: list[Any] = [TextColumn(description), BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TimeElapsedColumn(), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=False)
