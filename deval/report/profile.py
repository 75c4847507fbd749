"""Terminal reports with rich: the per-task metric table, a heat strip of P_token, and the verdict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from deval.core import metrics
from deval.core.protocol import Step
from deval.core.summary import TaskArrays
from deval.core.tasks import Task

SHADES = " ·░▒▓█"
SPARKS = "▁▂▃▄▅▆▇█"
VERDICT_STYLE = {"D": "bold red", "E": "bold green", "undetermined": "bold yellow", "format failure": "bold red",
                 "stable but misaligned": "bold magenta", "variable but aligned": "bold cyan"}
MAX_STRIP = 60  # steps shown in a heat strip

ROWS = [  # key, label, what a calibrated model scores (None: no fixed reference)
    ("e_score", "e-score (mean top P_token)", "max_p"),
    ("atvd", "ATVD (P_token vs P_task)", 0.0),
    ("result_tvd", "result TVD (per run)", None),
    ("on_set_mass", "on-set mass", 1.0),
    ("volatility", "volatility (step-to-step TV)", None),
    ("quota_r", "quota compensation r", None),
    ("entropy", "entropy of P_token (nats)", "h"),
    ("extremity", "extremity e~", 0.0),
]


def fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def spark(values: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> str:
    out = []
    for v in values:
        if np.isnan(v):
            out.append(" ")
        else:
            level = (min(max(v, lo), hi) - lo) / (hi - lo) if hi > lo else 0.0
            out.append(SPARKS[min(int(level * len(SPARKS)), len(SPARKS) - 1)])
    return "".join(out)


def heat_strip(task: Task, steps: list[Step], run: int | None = None) -> Table:
    """Items by steps for one run: shade = P_token at that step; the sampled item is marked in colour."""
    arrays = TaskArrays.from_steps(task, [s for s in steps if run is None or s.run == run])
    ptok = metrics.p_token(arrays.probs)[0][:MAX_STRIP]
    sampled = arrays.sampled[0][:MAX_STRIP]
    table = Table(box=None, show_header=True, pad_edge=False, padding=(0, 1))
    table.add_column("item", justify="right", style="bold")
    table.add_column("P_task", justify="right")
    table.add_column(f"P_token per step (run {run if run is not None else 0}; █ = 1, · ≈ 0; sampled in cyan)")
    for i, item in enumerate(task.items):
        line = Text()
        for t in range(ptok.shape[0]):
            p = ptok[t, i]
            ch = " " if np.isnan(p) else SHADES[min(int(p * (len(SHADES) - 1) + 0.5), len(SHADES) - 1)]
            if np.isnan(p) or p < 0.02:
                ch = "·" if not np.isnan(p) else " "
            line.append(ch, style="bold cyan" if sampled[t] == i else "grey50" if ch == "·" else "white")
        table.add_row(item, f"{task.weights[i]:.2f}", line)
    tv_t = metrics.tv(ptok, task.p_task)
    table.add_row("TV_t", "", Text(spark(tv_t), style="magenta"))
    return table


def format_line(s: dict) -> Text:
    """How many positions were format failures, and the on-set mass per position (mean over runs)."""
    mode = s.get("positions_mode", "free")
    if mode == "constrained":
        head = (f"positions constrained to the items (draws renormalised); the on-set mass the model would have had "
                f"is {fmt(s['on_set_mass']['mean'], 2)}")
    else:
        head = (f"format failures: {s['format_failures']} of {s['positions']} positions below on-set mass "
                f"{s['min_mass']:g} (left out of e-score, ATVD, entropy, volatility)")
    by_step = [np.nan if v is None else v for v in s.get("on_set_mass_by_step", [])][:MAX_STRIP]
    return Text(f"{head}\non-set mass per position  {spark(np.array(by_step, dtype=float))}  "
                f"(first {fmt(by_step[0] if by_step else None, 2)}, mean {fmt(s['on_set_mass']['mean'], 2)})",
                style="yellow" if s.get("format_failures") else "dim")


def tail_bounds_line(s: dict) -> Text:
    """Where ATVD and e-score could lie given the unseen tail: [best, worst] next to the point value."""
    parts = []
    for key, bounds, label in (("atvd", "atvd_bounds", "ATVD"), ("e_score", "e_score_bounds", "e-score")):
        if bounds in s:
            lo, hi = s[bounds]
            parts.append(f"{label} {fmt(s[key]['mean'])} in [{fmt(lo)}, {fmt(hi)}]")
    missing = s.get("missing_rate")
    if missing is not None and not (isinstance(missing, float) and math.isnan(missing)):
        parts.append(f"{missing:.0%} of positions miss an item from the top-k")
    return Text("with the tail anywhere: " + "; ".join(parts), style="yellow")


def task_panel(task: Task, s: dict, steps: list[Step] | None, filtered: bool = False) -> Panel:
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("metric")
    table.add_column("mean", justify="right")
    table.add_column("95% CI over runs", justify="right")
    table.add_column("calibrated", justify="right", style="dim")
    nulls = s.get("references", {})
    if nulls:
        table.add_column("ideal E | D sampler", justify="right", style="dim")
    p = task.p_task
    refs = {"max_p": float(p.max()), "h": float(metrics.entropy(p))}
    for key, label, ref in ROWS:
        stat = s.get(key)
        if stat is None:
            continue
        lo, hi = stat["ci"]
        mean = fmt(stat["mean"]) if key != "quota_r" or not s.get("quota_r_note") or not math.isnan(
            stat["mean"] if stat["mean"] is not None else float("nan")) else "n/a"
        row = [label, mean, f"[{fmt(lo)}, {fmt(hi)}]", fmt(refs.get(ref, ref)) if ref is not None else ""]
        if nulls:
            null = nulls.get(key)
            row.append(f"{fmt(null['E']['mean'], 2)} | {fmt(null['D']['mean'], 2)}" if null else "")
        table.add_row(*row)
    if filtered and "kept_coverage" in s:
        lo, hi = s["kept_coverage"]["ci"]
        table.add_row("P_task covered by the kept set", fmt(s["kept_coverage"]["mean"]), f"[{fmt(lo)}, {fmt(hi)}]",
                      "1.000")
    table.add_row("invalid rate", fmt(s["invalid_rate"]), "", "0.000")
    table.add_row("chi-square p (pooled counts)", fmt(s["chi2_p"], 4), "", "")
    body: list = [table]
    if s.get("quota_r_note"):
        body.append(Text(f"quota compensation r: {s['quota_r_note']}", style="yellow"))
    if "format_failures" in s:
        body.append(format_line(s))
    if s.get("tail_mass", {}).get("mean", 0) and s["tail_mass"]["mean"] > 0:
        body.append(Text(f"unseen tail mass per step: {fmt(s['tail_mass']['mean'])} (top-k only; see intervals)",
                         style="yellow"))
        body.append(tail_bounds_line(s))
    if s.get("flags"):
        body.append(Text("flags: " + ", ".join(s["flags"]), style="yellow"))
    counts = s["counts"]
    total = max(sum(counts.values()), 1)
    dist = Table(box=None, padding=(0, 1), show_header=True, header_style="bold")
    dist.add_column("item", justify="right")
    dist.add_column("P_task", justify="right")
    dist.add_column("mean P_token", justify="right")
    dist.add_column("P_result", justify="right")
    dist.add_column("")
    for item in task.items:
        pr = counts[item] / total
        dist.add_row(item, f"{s['p_task'][item]:.2f}", fmt(s["mean_p_token"][item], 2), f"{pr:.2f}",
                     Text("█" * int(round(pr * 30)), style="cyan"))
    body.append(dist)
    if steps:
        body.append(heat_strip(task, steps, run=min(st.run for st in steps)))
    mode = " · constrained" if s.get("positions_mode") == "constrained" else ""
    title = f"[bold]{task.name}[/] · {s['runs']} runs · {s['positions']} positions{mode}"
    return Panel(Group(*body), title=title, title_align="left", subtitle=task.description, subtitle_align="left")


def render_profile(summary: dict, tasks: dict[str, Task], steps: list[Step] | None = None,
                   console: Console | None = None, where: str | None = None) -> None:
    console = console or Console()
    model = summary["model"]
    model = Path(model).name if str(model).endswith(".gguf") else model
    head = (f"backend [bold]{summary['backend']}[/] · model [bold]{escape(str(model))}[/] · temperature "
            f"{summary['temperature']:g} · runs {summary['runs']} · seed {summary['seed']}")
    if summary.get("route"):
        head += f" · route [bold]{escape(summary['route'])}[/]"
    filters = summary.get("filters") or {}
    active = {k: v for k, v in filters.items() if k != "order" and v is not None}
    if active:
        head += " · filters " + ", ".join(f"{k}={v}" for k, v in active.items()) + f" ({filters['order']})"
    console.print(Text.from_markup(head))
    for name, s in summary["tasks"].items():
        task_steps = [st for st in (steps or []) if st.task == name]
        console.print(task_panel(tasks[name], s, task_steps, filtered=bool(active)))
    v = summary["verdict"]
    style = VERDICT_STYLE.get(v["type"], "bold")
    kind = v["type"] + (" (constrained positions)" if summary.get("positions") == "constrained" else "")
    console.print(Panel(Text(v["reason"]), title=f"verdict: [{style}]{kind}[/]", title_align="left"))
    if where:
        console.print(f"[dim]run files: {where}[/]")
    from deval.report.legend import PROFILE

    console.print(f"[dim]legend: {escape(PROFILE)}[/]", highlight=False, soft_wrap=True)
