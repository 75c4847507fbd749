"""The `deval layers` report: per task, a table of the lens's metrics layer by layer and a terminal chart."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from deval.report.legend import LAYERS
from deval.report.charts import MARKS, STYLES, Series, line_chart
from deval.report.profile import fmt

CHART = (("on_set_mass", "on-set mass"), ("e_score", "e-score"), ("atvd", "ATVD"))


def _ci(stat: dict) -> str:
    lo, hi = stat["ci"]
    return f"{fmt(stat['mean'], 2)} [{fmt(lo, 2)},{fmt(hi, 2)}]"


def layer_table(name: str, s: dict, own: dict | None) -> Table:
    """One row per layer (1 = the first block's output; the last row is the model's own distribution)."""
    table = Table(title=f"{name}: the logit lens, layer by layer", header_style="bold")
    for col in ("layer", "on-set mass", "e-score", "ATVD", "volatility", "top item"):
        table.add_column(col, justify="right" if col != "top item" else "left")
    for row in s["layers"]:
        ptok = row["mean_p_token"]
        top = max(ptok, key=lambda x: -1.0 if ptok[x] is None or ptok[x] != ptok[x] else ptok[x]) if ptok else ""
        table.add_row(str(row["layer"]), _ci(row["on_set_mass"]), _ci(row["e_score"]), _ci(row["atvd"]),
                      fmt(row["volatility"]["mean"]), f"{top} ({fmt(ptok.get(top), 2)})" if top else "")
    if own:
        table.add_row("model", fmt(own["on_set_mass"]["mean"]), fmt(own["e_score"]["mean"]),
                      fmt(own["atvd"]["mean"]), fmt(own["volatility"]["mean"]), "", style="dim")
    return table


def top_line(top: dict) -> Text:
    if not top.get("first"):
        return Text("no position put item mass on a top item", style="dim")
    return Text(f"the final top item is first on top at layer {top['first']['mean']:.1f} on average "
                f"(median {top['first']['median']:g}) and stays on top from layer {top['settled']['mean']:.1f} "
                f"(median {top['settled']['median']:g}), over {top['positions']} positions")


def layer_chart(s: dict) -> Text:
    series = [Series(label=label, y=tuple(float("nan") if r[key]["mean"] is None else 100 * r[key]["mean"]
                                          for r in s["layers"]), mark=MARKS[i], style=STYLES[i])
              for i, (key, label) in enumerate(CHART)]
    return line_chart(series, height=11, x_label="layer (1 = the first block's output)", y_label="percent")


def render_layers(summary: dict, console: Console | None = None, where: str | None = None) -> None:
    console = console or Console()
    lens = summary.get("lens", {})
    console.print(Text.from_markup(
        f"logit lens · model [bold]{escape(str(summary['model']))}[/] · {lens.get('arch', '?')}, "
        f"{lens.get('n_layer', '?')} layers · runs {summary['runs']} · T {summary['temperature']:g} · "
        f"seed {summary['seed']}"))
    check = summary.get("lens_check_max")
    if check is not None:
        console.print(f"lens check: at the last layer the lens matches the model's own log-probabilities within "
                      f"{check:.1e} (largest absolute difference over the vocabulary and every position)",
                      highlight=False)
    own_tasks = summary.get("profile", {}).get("tasks", {})
    for name, s in summary["tasks"].items():
        console.print(layer_table(name, s, own_tasks.get(name)))
        console.print(top_line(s["top_item"]))
        console.print(layer_chart(s))
    console.print(f"[dim]legend: {escape(LAYERS)}[/]", highlight=False, soft_wrap=True)
    if where:
        console.print(f"[dim]run directory: {escape(where)}[/]", highlight=False)
