"""Terminal reports for sweeps, calibration and diversity runs (rich), dispatched on the summary's schema."""

from __future__ import annotations

import numpy as np
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from deval.report import legend
from deval.report.charts import line_chart
from deval.report.profile import fmt, spark

SWEEP_COLUMNS = [("e_score", "e-score"), ("atvd", "ATVD"), ("result_tvd", "result TVD"),
                 ("on_set_mass", "on-set"), ("entropy", "entropy")]
DERIVED_COLUMNS = [("e_score", "e-score"), ("atvd", "ATVD"), ("on_set_mass", "on-set"), ("entropy", "entropy")]


def _filters_text(filters: dict) -> str:
    active = {k: v for k, v in (filters or {}).items() if k != "order" and v is not None}
    return "" if not active else " · filters " + ", ".join(f"{k}={v}" for k, v in active.items()) + \
        f" ({filters['order']})"


def render_sweep(summary: dict, console: Console | None = None, where: str | None = None) -> None:
    console = console or Console()
    console.print(Text.from_markup(
        f"temperature sweep · backend [bold]{summary['backend']}[/] · "
        f"model [bold]{escape(str(summary['model']))}[/] · "
        f"runs {summary['runs']} per temperature · seed {summary['seed']}{_filters_text(summary['filters'])}"))
    filtered = any(v is not None for k, v in summary["filters"].items() if k != "order")
    for name, s in summary["tasks"].items():
        rows = s["rows"]
        has_derived = any(r["derived"] for r in rows)
        derived_cols = [(k, label + "*") for k, label in DERIVED_COLUMNS
                        if any(r["derived"] and k in r["derived"] for r in rows)]
        table = Table(show_header=True, header_style="bold")
        table.add_column("T", justify="right")
        for _, label in SWEEP_COLUMNS:
            table.add_column(label, justify="right")
        if filtered:
            table.add_column("P_task kept", justify="right")
        for _, label in derived_cols:
            table.add_column(label, justify="right", style="cyan")
        for r in rows:
            m = r["measured"]
            cells = [f"{r['temperature']:g}"] + [fmt(m[k]["mean"]) if k in m else "n/a" for k, _ in SWEEP_COLUMNS]
            if filtered:
                cells.append(fmt(m.get("kept_coverage", {}).get("mean")))
            d = r["derived"] or {}
            cells += [fmt(d.get(k, {}).get("mean")) for k, _ in derived_cols]
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
                 else s.get("best_temperature_note") or "no measured ATVD"]
        if s.get("best_temperature_derived") is not None:
            lines[0] += f", T={s['best_temperature_derived']:g} (derived)"
        lines.append(f"the model {s['response']}")
        lines.append("measured (plain columns): sampled and profiled at each temperature; bold row: lowest ATVD")
        lines.append(f"* derived (cyan columns): {s['derived_note']}" + (
            "; along the T=1 run's own sampled path, so from step 2 on in sequence mode they answer "
            "'what if only this step were tempered', not what a run at T would see" if has_derived else ""))
        console.print(Panel(Group(table, sparks, Text("\n".join(lines))), title=f"[bold]{name}[/]",
                            title_align="left"))
    verdicts = ", ".join(f"T={t}: {v}" for t, v in summary["verdicts"].items())
    console.print(f"D/E verdict at each temperature (the paper reads it at T=1): {verdicts}")
    if where:
        console.print(f"[dim]run files: {where} (one profile run per temperature in its T* directory)[/]")
    console.print(f"[dim]legend: {escape(legend.SWEEP)}[/]", highlight=False, soft_wrap=True)


def render_calibration(summary: dict, console: Console | None = None, where: str | None = None) -> None:
    console = console or Console()
    console.print(Text.from_markup(
        f"calibration · backend [bold]{summary['backend']}[/] · "
        f"model [bold]{escape(str(summary['model']))}[/] · temperature "
        f"{summary['temperature']:g} · {summary['samples']} samples per rule · seed {summary['seed']} · filter order "
        f"{summary['filter_order']}"))
    for name, s in summary["tasks"].items():
        steps = Table(title="per step (trie over the members' tokenisations)", show_header=True, header_style="bold")
        steps.add_column("steps", no_wrap=True)
        for col in ("nodes", "|V_t|", "validity mass", "shape exp(H)/|V|", "AUROC"):
            steps.add_column(col, justify="right")
        labels = {"all": "all", "first": "first token", "inside": "inside a member", "end": "after a member"}
        for group, a in s["steps"].items():
            steps.add_row(labels.get(group, group), str(a["nodes"]), fmt(a["valid_tokens"], 1),
                          fmt(a["validity_mass"]), fmt(a["shape_diversity"]), fmt(a["auroc"]))
        rules = Table(title="cutoff rules: per step, then sequences", show_header=True,
                      header_style="bold")
        rules.add_column("rule", no_wrap=True)
        for col in ("prec.", "recall", "prec. 1st", "recall 1st", "valid", "distinct", "cover"):
            rules.add_column(col, justify="right")
        first = s["steps"].get("first", {}).get("rules", {})
        for label, pr in s["steps"]["all"]["rules"].items():
            seq = s["sequences"][label]
            f = first.get(label, {})
            rules.add_row(label, fmt(pr["precision"]), fmt(pr["recall"]), fmt(f.get("precision")),
                          fmt(f.get("recall")), fmt(seq["validity_rate"]), f"{seq['distinct_valid']}/{s['members']}",
                          fmt(seq["coverage"]), style="bold" if label == "oracle" else None)
        note = Text("oracle: keeps exactly the valid tokens V_t (precision = recall = 1 by construction); none: the "
                    "full distribution at the temperature. Precision |S∩V|/|S| and recall |S∩V|/|V| are means over "
                    "trie nodes (1st: the first answer token only); valid, distinct and cover(age of V) come from "
                    f"the sampled answers; {s['forward_passes']} forward passes.", style="dim")
        console.print(Panel(Group(steps, rules, note), title=f"[bold]{name}[/] · {s['members']} valid answers",
                            title_align="left"))
    if where:
        console.print(f"[dim]run files: {where}[/]")
    console.print(f"[dim]legend: {escape(legend.CALIBRATION)}[/]", highlight=False, soft_wrap=True)


def render_diversity(summary: dict, console: Console | None = None, where: str | None = None) -> None:
    from deval.report.charts import MARKS, STYLES, Series

    console = console or Console()
    console.print(Text.from_markup(
        f"distinct valid outputs · task [bold]{summary['task']}[/] ({summary['members']} valid answers) · rule "
        f"{summary['rule']['label']} · temperature {summary['temperature']:g} · {summary['samples']} samples · "
        f"seed {summary['seed']}"))
    models = summary["models"]
    series = [Series(f"ideal uniform sampler K(1-(1-1/K)^n), K={summary['members']}",
                     tuple(next(iter(models.values()))["ideal"]), "·", "dim")]
    table = Table(show_header=True, header_style="bold")
    table.add_column("model", overflow="fold")
    for col in ("valid", "P(valid)", "distinct", "expected", "ideal", "unexplored"):
        table.add_column(col, justify="right")
    for i, (label, d) in enumerate(models.items()):
        style, mark = STYLES[i % len(STYLES)], MARKS[i % len(MARKS)]
        series.append(Series(f"{label}: expected (exact)", tuple(d["expected"]), "─", style))
        series.append(Series(f"{label}: observed", tuple(float(v) for v in d["observed"]), mark, style))
        table.add_row(label, fmt(d["validity_rate"]), fmt(d["validity_probability"]), str(d["distinct_valid"]),
                      fmt(d["expected"][-1], 2), fmt(d["ideal"][-1], 2), fmt(d["unexplored_mass"], 4))
    chart = line_chart(series, x_label="samples drawn", y_label="distinct valid outputs")
    note = Text("valid: share of the N samples that spell a valid answer; P(valid): its exact probability; "
                "distinct / expected / ideal: distinct valid answers after N samples. "
                "expected: sum over valid answers of 1-(1-q_x)^n with q_x the exact probability of answer x "
                "(every tokenisation, pruned below the unexplored mass); it never exceeds the ideal curve. "
                "observed: one draw of N samples, which can sit above its expectation by chance.", style="dim")
    console.print(Panel(Group(chart, table, note), title="distinct valid outputs vs samples drawn", title_align="left"))
    if where:
        console.print(f"[dim]run files: {where}[/]")
    console.print(f"[dim]legend: {escape(legend.DIVERSITY)}[/]", highlight=False, soft_wrap=True)
