"""The `deval code` report: pass@k, Δpass and solution diversity per temperature, the sandbox, the profile verdict."""

from __future__ import annotations

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from deval.report.profile import fmt

SCHEMA = "deval.code/1"


def _cell(stat: dict | None) -> str:
    if not stat:
        return "n/a"
    lo, hi = stat["ci"]
    return f"{fmt(stat['mean'])} [{fmt(lo)}, {fmt(hi)}]"


def _count_cell(stat: dict) -> str:
    lo, hi = stat["ci"]
    return f"{fmt(stat['mean'], 2)} [{fmt(lo, 2)}, {fmt(hi, 2)}]"


def render_code(summary: dict, console: Console | None = None, where: str | None = None) -> None:
    console = console or Console()
    groups = summary["groups"]
    if "file" in groups:
        g = groups["file"]
        head = (f"HumanEval · completions file [bold]{escape(str(summary['model']))}[/] · "
                f"{len(g['problems'])} problems · {g['samples']} completions (k up to {g['samples_per_problem']})")
    else:
        head = (f"HumanEval · backend [bold]{escape(str(summary['backend']))}[/] · model "
                f"[bold]{escape(str(summary['model']) or '-')}[/] · {len(summary['problems'])} problems · "
                f"{summary['samples']} samples per problem · {'raw continuation' if summary['raw'] else 'chat'} · "
                f"max_tokens {summary['max_tokens']} · seed {summary['seed']}")
    console.print(Text.from_markup(head))
    ks = sorted({int(k) for g in groups.values() for k in g["pass@k"]})
    table = Table(show_header=True, header_style="bold")
    table.add_column("T", justify="right")
    for k in ks:
        table.add_column(f"pass@{k}", justify="right")
    for k in ks[1:]:
        table.add_column(f"Δpass@{k}", justify="right")
    table.add_column("distinct / problem", justify="right")
    table.add_column("distinct passing", justify="right")
    table.add_column("scored", justify="right")
    for name, g in groups.items():
        row = [name]
        row += [_cell(g["pass@k"].get(str(k))) for k in ks]
        row += [_cell(g["delta_pass"].get(str(k))) for k in ks[1:]]
        row += [_count_cell(g["distinct_solutions"]), _count_cell(g["distinct_passing"]),
                f"{g['passed']}/{g['samples']}"]
        table.add_row(*row)
    notes = [Text("pass@k: 1 - C(n-c,k)/C(n,k) per problem (n samples, c passing), averaged over problems; "
                  "Δpass@k = pass@k - pass@1 (what sampling more buys: large for a diverse sampler, near 0 for a "
                  "stable one); distinct: different solutions per problem after normalisation (parsed, comments "
                  "and docstrings dropped); [a, b]: 95% bootstrap interval over problems.", style="dim")]
    reasons = Table(show_header=True, header_style="bold", title="why samples failed (most common first)")
    reasons.add_column("T")
    reasons.add_column("reasons")
    for name, g in groups.items():
        failed = {r: n for r, n in g["reasons"].items() if r != "passed"}
        reasons.add_row(name, ", ".join(f"{escape(r)}: {n}" for r, n in list(failed.items())[:6]) or "none")
    console.print(Panel(Group(table, reasons, *notes), title="pass@k, Δpass and solution diversity",
                        title_align="left"))
    sb = summary["sandbox"]
    line = (f"sandbox: {sb['mechanism']} · network {sb['network']} · files {sb['filesystem']} · uid {sb['uid']} · "
            f"limits {sb['limits']['cpu_s']}s CPU, {sb['limits']['wall_s']:g}s wall, "
            f"{sb['limits']['memory_bytes'] >> 20} MiB, {sb['limits']['processes']} processes")
    if sb.get("weaker_because"):
        line += f" · weaker: {sb['weaker_because']}"
    if sb.get("stronger"):
        line += f" · stronger: {sb['stronger']}"
    console.print(Text(line, style="dim"))
    profile = summary.get("profile")
    if profile:
        v = profile["verdict"]
        console.print(Text.from_markup(
            f"profile of [bold]{escape(str(profile['model']))}[/] ({escape(profile['run'])}): "
            f"[bold]{escape(str(v.get('type')))}[/] · {escape(str(v.get('reason', '')))}"))
    if where:
        console.print(f"[dim]run files: {where}[/]")
