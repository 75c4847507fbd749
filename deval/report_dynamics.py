"""Terminal reports for sweeps, calibration and diversity runs (rich), dispatched on the summary's schema."""

from __future__ import annotations

import numpy as np
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from deval.charts import line_chart
from deval.report import fmt, spark

SWEEP_COLUMNS = [("e_score", "e-score"), ("atvd", "ATVD"), ("result_tvd", "result TVD"),
                 ("on_set_mass", "on-set"), ("entropy", "entropy")]


def _filters_text(filters: dict) -> str:
    active = {k: v for k, v in (filters or {}).items() if k != "order" and v is not None}
    return "" if not active else " · filters " + ", ".join(f"{k}={v}" for k, v in active.items()) + \
        f" ({filters['order']})"


def render_sweep(summary: dict, console: Console | None = None, where: str | None = None) -> None:
    console = console or Console()
    console.print(Text.from_markup(
        f"temperature sweep · backend [bold]{summary['backend']}[/] · model [bold]{summary['model']}[/] · "
        f"runs {summary['runs']} per temperature · seed {summary['seed']}{_filters_text(summary['filters'])}"))
    filtered = any(v is not None for k, v in summary["filters"].items() if k != "order")
    for name, s in summary["tasks"].items():
        rows = s["rows"]
        has_derived = any(r["derived"] for r in rows)
        table = Table(show_header=True, header_style="bold")
        table.add_column("T", justify="right")
        for _, label in SWEEP_COLUMNS:
            table.add_column(label, justify="right")
        if filtered:
            table.add_column("P_task kept", justify="right")
        if has_derived:
            table.add_column("e-score*", justify="right", style="cyan")
            table.add_column("ATVD*", justify="right", style="cyan")
        for r in rows:
            m = r["measured"]
            cells = [f"{r['temperature']:g}"] + [fmt(m[k]["mean"]) if k in m else "n/a" for k, _ in SWEEP_COLUMNS]
            if filtered:
                cells.append(fmt(m.get("kept_coverage", {}).get("mean")))
            if has_derived:
                d = r["derived"] or {}
                cells += [fmt(d.get("e_score", {}).get("mean")), fmt(d.get("atvd", {}).get("mean"))]
            style = "bold" if r["temperature"] == s["best_temperature"] else None
            table.add_row(*cells, style=style)
        sparks = Table(box=None, show_header=False, padding=(0, 1))
        sparks.add_column(justify="right")
        sparks.add_column()
        for key, label in SWEEP_COLUMNS[:3]:
            values = np.array([np.nan if r["measured"][key]["mean"] is None else r["measured"][key]["mean"]
                               for r in rows], dtype=float)
            sparks.add_row(label, Text(spark(values), style="magenta"))
        if has_derived:
            values = np.array([r["derived"]["atvd"]["mean"] if r["derived"] else np.nan for r in rows], dtype=float)
            sparks.add_row("ATVD*", Text(spark(values), style="cyan"))
        lines = [f"ATVD is lowest at T={s['best_temperature']:g} (measured)" if s["best_temperature"] is not None
                 else "no measured ATVD"]
        if s.get("best_temperature_derived") is not None:
            lines[0] += f", T={s['best_temperature_derived']:g} (derived)"
        lines.append(f"the model {s['response']}")
        lines.append("measured: sampled and profiled at each temperature (bold row: lowest ATVD); "
                     f"* derived: {s['derived_note']}" + (" (softmax of the T=1 item-token log-probabilities / T)"
                                                           if has_derived else ""))
        console.print(Panel(Group(table, sparks, Text("\n".join(lines))), title=f"[bold]{name}[/]",
                            title_align="left"))
    verdicts = ", ".join(f"T={t}: {v}" for t, v in summary["verdicts"].items())
    console.print(f"D/E verdict at each temperature (the paper reads it at T=1): {verdicts}")
    if where:
        console.print(f"[dim]run files: {where} (one profile run per temperature in its T* directory)[/]")
