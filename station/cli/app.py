"""The `station` Typer app. Each command group lives in its own module and registers here.

Expected failures (`StationError`) print one red line and exit non-zero; no traceback.
"""

from __future__ import annotations

import importlib
import inspect
import signal
import sys
import threading

import typer
from rich.console import Console
from rich.markup import escape

from station import __version__
from station.errors import RecipeError, StationError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="station",
    help="Inline inspection cell for woven glass-fibre sheets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules under station.cli that each define `register(app)`.
COMMAND_MODULES = [
    "recipe",
    "plan",
    "db",
    "capture",
    "train",
    "evaluate",
    "tune",
    "export",
    "review",
    "calibrate",
    "retrain",
    "cellcal",
    "inspect",
    "monitor",
    "sim",
    "demo",
]


def _version(value: bool) -> None:
    if value:
        console.print(f"station {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Inline inspection cell for woven glass-fibre sheets."""
    from station.imaging import check_opencv

    check_opencv()


def _reflowed(text: str) -> str:
    """A docstring's paragraphs, each on one line: Typer's rich help keeps the source's line
    breaks inside a paragraph, which then wrap unevenly at the terminal's width."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def _reflow_help(group: typer.Typer) -> None:
    """Reflow the help of every command in `group` and its subgroups."""
    for info in group.registered_commands:
        text = info.help or inspect.getdoc(info.callback) or ""
        info.help = _reflowed(text) if text else None
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _reflow_help(sub.typer_instance)


for _name in COMMAND_MODULES:
    importlib.import_module(f"station.cli.{_name}").register(app)
_reflow_help(app)


def report_error(exc: StationError) -> None:
    """Print an expected failure as one line per problem, plus the hint."""
    # Messages carry paths and values: never read them as rich markup ("[/x]" would crash).
    if isinstance(exc, RecipeError):
        path = escape(str(exc.path))
        if len(exc.problems) == 1:  # one line, as for every other expected failure
            err_console.print(f"[bold red]error:[/] {path}: {escape(exc.problems[0])}",
                              highlight=False, soft_wrap=True)
            return
        err_console.print(f"[bold red]error:[/] recipe {path} is not valid:", highlight=False)
        for problem in exc.problems:
            err_console.print(f"  {path}: {escape(problem)}", highlight=False, soft_wrap=True)
        return
    err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err_console.print(f"  hint: {escape(exc.hint)}", highlight=False, soft_wrap=True)


def _terminate(_signum: int, _frame: object) -> None:
    # systemd and `kill` send SIGTERM: unwind like an exception, so that every `finally`
    # runs (cell left safe, robot link closed, files complete) and atexit hooks run too.
    raise SystemExit(143)


def main(argv: list[str] | None = None) -> None:
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        _run(argv)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run(argv: list[str] | None) -> None:
    try:
        code = app(args=argv, standalone_mode=False)
    except StationError as exc:
        report_error(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(1)
    except Exception as exc:  # usage errors arrive here in non-standalone mode
        import click

        # Recent Typer (0.29 here) raises its own vendored copy of click's exceptions, whose
        # common base is typer.TyperException; older Typer raises click's.
        usage = (click.ClickException, getattr(typer, "TyperException", click.ClickException))
        if isinstance(exc, usage) and callable(getattr(exc, "show", None)):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        raise
    # Outside standalone mode, click returns a `typer.Exit(code)` raised by a command.
    if isinstance(code, int) and code:
        sys.exit(code)
