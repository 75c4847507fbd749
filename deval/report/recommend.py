"""The recommend report: hit@K, can-hit, hallucination, repeat, diversity, popularity per temperature, and the
P_token view at the first slot (rich)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from deval.report.profile import fmt

COLUMNS = [("hit", "hit@K"), ("can_hit", "can-hit"), ("hallucination", "hallucination"), ("repeat", "repeat"),
           ("distinct", "distinct per user"), ("distinct_ratio", "distinct share"), ("popularity_rank", "pop. rank")]


def _cell(m: dict | None, digits: int = 3) -> str:
    if not m or m.get("mean") is None:
        return "n/a"
    lo, hi = m["ci"]
    return f"{fmt(m['mean'], digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def render_recommend(summary: dict, console: Console | None = None, where: str | None = None) -> None:
    console = console or Console()
    d = summary["data"]
    source = f"completions {escape(str(summary['completions']))}" if summary.get("completions") else \
        f"backend [bold]{summary['backend']}[/] · model [bold]{escape(str(summary['model']))}[/]"
    console.print(Text.from_markup(
        f"recommend · {source} · {summary['users']} users · history {summary['history']} · K {summary['k']}"
        + ("" if summary.get("completions") else f" · {summary['samples']} samples per user")
        + f" · seed {summary['seed']}"))
    console.print(f"data: {escape(d['path'])} ({d['layout']}: {d['movies']} movies, {d['ratings']} ratings used)",
                  highlight=False)
    for reason, n in d["skipped"].items():
        console.print(f"[yellow]skipped {n} {reason}[/]", highlight=False)
    for note in d["notes"]:
        console.print(f"[yellow]note: {escape(note)}[/]", highlight=False)
    groups = summary["groups"]
    table = Table(show_header=True, header_style="bold", title="means over users [95% bootstrap interval over users]")
    table.add_column("")
    for g in groups:
        table.add_column(g["label"], justify="right")
    for key, label in COLUMNS:
        table.add_row(label, *[_cell(g["metrics"][key], 2 if key == "distinct" else 3) for g in groups])
    table.add_row("coverage", *[fmt(g["coverage"]) for g in groups])
    lines = [
        "hit@K: held-out movie in one sample's list; can-hit: in the union of a user's samples; hallucination: "
        "titles not in the catalogue; repeat: titles the user rated before; pop. rank: 0 = most rated ... 1 = least",
    ]
    for g in summary["groups"]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(g["match_kinds"].items()))
        lines.append(f"{g['label']}: {g['titles']} titles ({kinds or 'none'}); {g['empty_samples']} samples "
                     f"without a title; {g['cut_titles']} titles beyond K cut; {g['distinct_overall']} movies "
                     f"recommended overall; held-out movies' pop. rank {fmt(g['held_out_popularity_rank'])}")
        if g["top"]:
            lines.append("  most recommended: " + "; ".join(f"{t} x{n}" for t, n in g["top"]))
        if g["unmatched"]:
            lines.append("  not in the catalogue, e.g.: " + "; ".join(g["unmatched"]))
    parts = [table, Text("\n".join(lines))]
    ptok = [g for g in summary["groups"] if g.get("ptoken")]
    if ptok:
        pt = Table(show_header=True, header_style="bold",
                   title="P_token at the first slot: the held-out title's probability and rank among catalogue titles")
        for col in ("", "mean log p(held-out)", "median rank", "held-out in model's top K", "exact ranks"):
            pt.add_column(col, justify="right")
        for g in ptok:
            p = g["ptoken"]
            rank = f"{p['median_rank']:g}" if p["median_rank"] == p["median_rank_hi"] else \
                f"{p['median_rank']:g}..{p['median_rank_hi']:g}"
            top = _cell(p["top_k"]) + ("" if p["top_k_hi"] == p["top_k"]["mean"] else f" (<= {fmt(p['top_k_hi'])})")
            pt.add_row(g["label"], _cell(p["logprob"], 2), rank, top, f"{p['exact_ranks']}/{p['users']}")
        parts.append(pt)
    console.print(Panel(Group(*parts), title="[bold]next-item recommendation[/]", title_align="left"))
    if where:
        console.print(f"[dim]run files: {where}[/]")
