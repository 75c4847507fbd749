"""The terminal view of `deval compare`: per task, each run's metric with its interval and each difference."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from deval.report.legend import COMPARE
from deval.report.profile import fmt


def _stat(s: dict | None) -> str:
    s = s or {}
    ci = s.get("ci") or [None, None]
    return f"{fmt(s.get('mean'))} [{fmt(ci[0])}, {fmt(ci[1])}]"


def render_compare(data: dict, console: Console | None = None) -> None:
    console = console or Console()
    runs = data["runs"]
    head = Table(title="runs", show_header=True, header_style="bold")
    for col in ("run", "directory", "verdict"):
        head.add_column(col, overflow="fold")
    for r in runs:
        head.add_row(escape(r["label"]), escape(r["path"]), (r.get("verdict") or {}).get("type", ""))
    console.print(head)
    if data.get("config_differences"):
        cfg = Table(title="config differences", show_header=True, header_style="bold")
        cfg.add_column("setting")
        for r in runs:
            cfg.add_column(escape(r["label"]), overflow="fold")
        for key, values in data["config_differences"].items():
            cfg.add_row(key, *[escape(str(v)) for v in values])
        console.print(cfg)
    for name, t in data["tasks"].items():
        table = Table(title=f"{name}", show_header=True, header_style="bold")
        table.add_column("metric")
        for r in runs:
            table.add_column(escape(r["label"]) + " mean [95% CI]", justify="right")
        for r in runs[1:]:
            table.add_column(f"{escape(r['label'])} - {escape(runs[0]['label'])} [95% CI]", justify="right")
        for key, m in t["metrics"].items():
            cells = [_stat(v) for v in m["values"]]
            for d in m["differences"]:
                lo, hi = d["ci"]
                said = "significant" if d.get("significant") else "not significant"
                cells.append(f"{fmt(d.get('diff'))} [{fmt(lo)}, {fmt(hi)}] p={fmt(d.get('p_holm'), 3)} {said}")
            table.add_row(key, *cells)
        console.print(table)
    for note in data.get("notes", []):
        console.print(f"note: {escape(note)}", highlight=False)
    if data.get("only_in_some"):
        console.print(f"tasks not in every run (left out): {', '.join(data['only_in_some'])}", highlight=False)
    console.print(f"[dim]{escape(COMPARE)}[/]", highlight=False, soft_wrap=True)
