"""`station monitor`: the drift charts and the placement watch of a recipe in the terminal, and
its alarms."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from station.calibration.recipes import load_recipe
from station.storage.alarms import PLACEMENT_PREFIX

if TYPE_CHECKING:
    from rich.console import Console

    from station.monitoring.drift import DriftMonitor
    from station.monitoring.placement import PlacementWatch


def register(app: typer.Typer) -> None:
    @app.command("monitor")
    def monitor_cmd(
        recipe: str = typer.Option("glassfiber", "--recipe", "-r", help="Recipe name or path."),
        last: int = typer.Option(8, "--last", "-n", min=1, max=200, help="Points to show."),
        signal: str | None = typer.Option(
            None, "--signal", "-s", help="Show one signal's last points in full, e.g. 'mean r1c1'."
        ),
        clear: int | None = typer.Option(None, "--clear", help="Clear this alarm (by id)."),
        by: str | None = typer.Option(None, "--by", help="Who clears it (with --clear)."),
    ) -> None:
        """Drift charts (EWMA, CUSUM) per signal and the placement watch per side: state, open
        alarms and the last points.

        Rebuilt from the database: the baselines of the calibration the newest part was
        inspected with, and every part inspected with it. Reads only (but --clear).
        """
        from station.cli.app import console
        from station.errors import StationError
        from station.inspection.drift_hook import build_monitor, read_calibration
        from station.paths import station_home
        from station.storage.alarms import clear_alarm, latest_calibration, list_alarms
        from station.storage.db import open_database

        rcp = load_recipe(recipe)
        db = open_database(rcp.storage.resolved_database_url())
        try:
            if clear is not None:
                if not by:
                    raise StationError("--clear needs --by NAME", hint="say who clears it")
                row = clear_alarm(db, clear, by)
                console.print(f"alarm {row.id} ({escape(row.signal)}, {row.chart}) cleared "
                              f"by {escape(by)}", highlight=False)
                return
            cal_id, cal_file = latest_calibration(db, rcp.name)
            path = Path(cal_file) if cal_file else rcp.calibration_path
            if not path.is_absolute():
                path = station_home() / path
            doc = read_calibration(path) if path.is_file() else {}
            if cal_id is not None:
                doc = {**doc, "id": cal_id}
            monitor, notes = build_monitor(rcp, db, doc, store=False)
            alarms = list_alarms(db, rcp.name, open_only=True)
        finally:
            db.dispose()
        if signal is not None:
            _check_signal(monitor, signal)  # before anything is printed
        cfg = rcp.monitoring.drift
        ref = cfg.reference
        console.print(
            f"drift monitor of {escape(rcp.name)}: {monitor.parts_seen} part(s) charted; "
            f"EWMA lambda {cfg.ewma_lambda:g}, L {cfg.ewma_l:g}; CUSUM k {cfg.cusum_k:g}, "
            f"h {cfg.cusum_h:g} (sigma units); points clipped at {cfg.clip:g} sigma"
            + ("" if cfg.enabled else "; monitoring.drift is OFF in the recipe"),
            highlight=False,
        )
        console.print(
            (f"reference card at {list(ref.centre_mm)} mm, shot every {ref.every_parts} "
             f"part(s); its charts: EWMA lambda {ref.ewma_lambda:g}, L {ref.ewma_l:g}; CUSUM k "
             f"{ref.cusum_k:g}, h {ref.cusum_h:g}; limits from its first {ref.warmup_parts} "
             "shots") if ref.enabled else "no reference card (monitoring.drift.reference off)",
            highlight=False,
        )
        for n in notes:
            console.print(f"  {escape(n)}", highlight=False, soft_wrap=True)
        _state_table(console, monitor, last)
        if monitor.placement is not None:
            _placement_table(console, monitor.placement, last)
        if alarms:
            console.print(f"[bold yellow]{len(alarms)} open alarm(s):[/]")
            for a in alarms:
                console.print(
                    f"  {a.id}  {a.raised_at:%Y-%m-%d %H:%M:%S}  {escape(a.message)}",
                    highlight=False, soft_wrap=True,
                )
        else:
            console.print("no open alarm")
        if signal is not None:
            _signal_points(console, monitor, signal, last)


def _state_table(console: Console, monitor: DriftMonitor, last: int) -> None:
    t = Table(title="signals", title_justify="left")
    for col in ("signal", "baseline", "n", "last", "EWMA (sigma)", "CUSUM +/-", "state",
                f"last {last}"):
        t.add_column(col)
    for name in sorted(monitor.signals):
        st = monitor.signals[name]
        b = st.baseline
        base = f"{b.centre:.4g} +- {b.sigma:.3g}" if b else f"warm-up {len(st.warmup)}"
        pts = list(st.last)[-last:]
        ew = f"{st.ewma.value:+.2f} / {st.ewma.limit:.2f}" if st.ewma else "-"
        cu = (f"{st.pair.cusum.hi:.2f} / {st.pair.cusum.lo:.2f}" if st.pair and st.cusum
              else "-")
        state = ", ".join(sorted(st.alarmed)) + " ALARM" if st.alarmed else "ok"
        t.add_row(name, base, str(b.n if b else ""), f"{pts[-1][1]:.4g}" if pts else "-", ew,
                  cu, state, " ".join(f"{p[1]:.4g}" for p in pts))
    console.print(t)


def _placement_table(console: Console, watch: PlacementWatch, last: int) -> None:
    cfg = watch.cfg
    t = Table(title=f"placement: mm past the region's side (tolerance {watch.tolerance_mm:g} mm; "
              f"alarm below Cpk {cfg.min_cpk:g} over {cfg.window_parts} parts)",
              title_justify="left")
    for col in ("signal", "n", "mean", "sd", "mean + 3 sd", "Cpk", "state", f"last {last}"):
        t.add_column(col)
    for side, st in watch.sides.items():
        got, cpk = st.stats(), watch.cpk(side)
        mean, sd = got if got else (None, None)
        t.add_row(PLACEMENT_PREFIX + side, str(len(st.points)),
                  f"{mean:+.2f}" if mean is not None else "-", f"{sd:.2f}" if sd else "-",
                  f"{mean + 3 * sd:+.2f}" if mean is not None and sd else "-",
                  f"{cpk:.2f}" if cpk is not None else "window not full",
                  "ALARM" if st.alarmed else "ok",
                  " ".join(f"{p[3]:+.2f}" for p in list(st.points)[-last:]))
    console.print(t)


def _known(monitor: DriftMonitor) -> list[str]:
    placed = [PLACEMENT_PREFIX + s for s in monitor.placement.sides] if monitor.placement else []
    return sorted([*monitor.signals, *placed])


def _check_signal(monitor: DriftMonitor, signal: str) -> None:
    from station.errors import StationError

    known = _known(monitor)
    if signal not in known:
        raise StationError(f"no signal {signal!r}", hint=f"known: {', '.join(known) or 'none yet'}")


def _signal_points(console: Console, monitor: DriftMonitor, signal: str, last: int) -> None:
    if monitor.placement is not None and monitor.placement.owns(signal):
        t = Table(title=f"last points of {signal} (mm past the region)", title_justify="left")
        for col in ("part", "value"):
            t.add_column(col, justify="right")
        side = monitor.placement.sides[signal.removeprefix(PLACEMENT_PREFIX)]
        for _, seq, _, x in list(side.points)[-last:]:
            t.add_row(str(seq), f"{x:+.3f}")
        console.print(t)
        return
    st = monitor.signals[signal]
    t = Table(title=f"last points of {signal}", title_justify="left")
    for col in ("part", "value", "u (sigma)", "EWMA", "CUSUM"):
        t.add_column(col, justify="right")
    for seq, x, u, z, c in list(st.last)[-last:]:
        t.add_row(str(seq), f"{x:.5g}", f"{u:+.2f}", f"{z:+.3f}", f"{c:.2f}")
    console.print(t)
