"""Self-contained HTML reports: tables, inline SVG figures, the legend; no script, no stylesheet or font from
elsewhere, so the page shows the same offline and makes no request when opened."""

from __future__ import annotations

import html
import math
from pathlib import Path

from deval.report.legend import COMPARE, legend_for
from deval.version import __version__

STYLE = """body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:62em;color:#222;
padding:0 1em}h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{padding:.25em .7em;border-bottom:1px solid #eee;
text-align:right}td:first-child,th:first-child{text-align:left}.meta{color:#555}.verdict{padding:.7em 1em;
border-left:.4em solid #999;background:#f6f6f6;margin:1em 0}.D{border-color:#d62728}.E{border-color:#2ca02c}
.undetermined{border-color:#e0a000}.sig{font-weight:bold}figure{margin:1em 0}figure svg{max-width:100%;height:auto}
.legend{color:#555;font-size:.85em;border-top:1px solid #ddd;margin-top:2em;padding-top:.6em}"""
PROFILE_ROWS = (("e_score", "e-score"), ("atvd", "ATVD"), ("result_tvd", "result TVD"), ("on_set_mass", "on-set mass"),
                ("volatility", "volatility"), ("quota_r", "quota r"), ("entropy", "entropy (nats)"),
                ("extremity", "extremity e~"))


def esc(x) -> str:
    return html.escape(str(x))


def num(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else esc(x)


def stat_cells(stat) -> str:
    stat = stat or {}
    ci = stat.get("ci") or [None, None]
    return f"<td>{num(stat.get('mean'))}</td><td>[{num(ci[0])}, {num(ci[1])}]</td>"


def table(head: list[str], rows: list[str]) -> str:
    return ("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
            + "".join(f"<tr>{r}</tr>" for r in rows) + "</table>")


def page(title: str, body: list[str], legend: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>{STYLE}</style></head>"
            f"<body><h1>{esc(title)}</h1>{''.join(body)}<p class=\"legend\">{esc(legend)}</p>"
            f"<p class=\"meta\">deval {esc(__version__)}</p></body></html>\n")


def figure_html(figs: list) -> list[str]:
    from deval.report.plots import svg_text

    return [f"<figure id=\"fig-{esc(name)}\">{svg_text(fig)}</figure>" for name, fig in figs]


def figures_slot(task: str) -> str:
    """Where a task's own figures go (figure names end in -<task>); the rest follow the tables."""
    from deval.report.plots import safe_name

    return f"<!--figures:{safe_name(task)}-->"


def place_figures(body: list[str], figs: list) -> list[str]:
    text = "".join(body)
    rest = []
    for name, fig in figs:
        slot = f"<!--figures:{name.split('-', 1)[-1]}-->"
        if "-" in name and slot in text:
            text = text.replace(slot, figure_html([(name, fig)])[0] + slot, 1)
        else:
            rest.append((name, fig))
    return [text, *figure_html(rest)]


def verdict_box(v: dict | None) -> str:
    if not v:
        return ""
    kind = v.get("type", "undetermined")
    return (f"<div class=\"verdict {esc(kind)}\"><b>verdict: {esc(kind)}</b> "
            f"(colour: red D, green E, amber undetermined)<br>{esc(v.get('reason', ''))}</div>")


def profile_body(s: dict) -> list[str]:
    out = [verdict_box(s.get("verdict"))]
    for name, t in s.get("tasks", {}).items():
        rows = [f"<td>{esc(label)}</td>{stat_cells(t.get(key))}" for key, label in PROFILE_ROWS if key in t]
        rows.append(f"<td>invalid rate</td><td>{num(t.get('invalid_rate'))}</td><td></td>")
        rows.append(f"<td>chi-square p (pooled)</td><td>{num(t.get('chi2_p'), 4)}</td><td></td>")
        out.append(f"<h2>{esc(name)} · {esc(t.get('runs', '?'))} runs · {esc(t.get('positions', '?'))} positions</h2>")
        out.append(table(["metric", "mean", "95% CI over runs"], rows) + figures_slot(name))
    return out


def sweep_body(s: dict) -> list[str]:
    out = [f"<p>verdict at each temperature: "
           f"{esc(', '.join(f'T={k}: {v}' for k, v in s.get('verdicts', {}).items()))}</p>"]
    keys = (("e_score", "e-score"), ("atvd", "ATVD"), ("result_tvd", "result TVD"), ("on_set_mass", "on-set"))
    for name, t in s.get("tasks", {}).items():
        rows = []
        for r in t.get("rows", []):
            m, d = r.get("measured", {}), r.get("derived") or {}
            rows.append(f"<td>{num(r.get('temperature'), 3)}</td>"
                        + "".join(f"<td>{num((m.get(k) or {}).get('mean'))}</td>" for k, _ in keys)
                        + f"<td>{num((d.get('atvd') or {}).get('mean'))}</td>")
        out.append(f"<h2>{esc(name)}</h2><p>{esc(t.get('response', ''))}</p>")
        out.append(table(["T", *[label for _, label in keys], "ATVD (derived)"], rows) + figures_slot(name))
    return out


def calibration_body(s: dict) -> list[str]:
    out = []
    for name, t in s.get("tasks", {}).items():
        rows = []
        for label, pr in ((t.get("steps", {}).get("all") or {}).get("rules") or {}).items():
            seq = t.get("sequences", {}).get(label, {})
            rows.append(f"<td>{esc(label)}</td><td>{num(pr.get('precision'))}</td><td>{num(pr.get('recall'))}</td>"
                        f"<td>{num(seq.get('validity_rate'))}</td><td>{esc(seq.get('distinct_valid', ''))}</td>"
                        f"<td>{num(seq.get('coverage'))}</td>")
        out.append(f"<h2>{esc(name)} · {esc(t.get('members', '?'))} valid answers</h2>")
        out.append(table(["rule", "precision", "recall", "valid", "distinct", "coverage"], rows) + figures_slot(name))
    return out


def diversity_body(s: dict) -> list[str]:
    rows = [f"<td>{esc(label)}</td><td>{num(d.get('validity_rate'))}</td><td>{num(d.get('validity_probability'))}"
            f"</td><td>{esc(d.get('distinct_valid'))}</td><td>{num((d.get('expected') or [None])[-1], 2)}</td>"
            f"<td>{num((d.get('ideal') or [None])[-1], 2)}</td>" for label, d in s.get("models", {}).items()]
    return [table(["model", "valid", "P(valid)", "distinct", "expected", "ideal"], rows)]


BODIES = {"deval.profile": profile_body, "deval.sweep": sweep_body, "deval.calibration": calibration_body,
          "deval.diversity": diversity_body}


def run_page(summary: dict, context: dict, where: str = "") -> str:
    """The whole report of one run as a self-contained HTML page."""
    from deval.report.plots import figures

    fam = str(summary.get("schema", "")).split("/")[0]
    model = str(summary.get("model") or ", ".join(summary.get("models", {})))
    model = Path(model).name if model.endswith(".gguf") else model
    kind = fam.replace("deval.", "") or "run"
    meta = " · ".join(f"{k} {esc(v)}" for k, v in (("backend", summary.get("backend")), ("model", model),
                                                   ("temperature", summary.get("temperature")),
                                                   ("runs", summary.get("runs")), ("seed", summary.get("seed")))
                      if v not in (None, ""))
    body = [f"<p class=\"meta\">{meta}<br>run files: {esc(where)}</p>"]
    body += BODIES.get(fam, lambda s: [])(summary)
    body = place_figures(body, figures(summary, context))
    return page(f"deval {kind} report", body, legend_for(summary.get("schema")))


def compare_page(comparison: dict) -> str:
    """`deval compare` as a self-contained HTML page: per task each metric, the difference and its interval."""
    runs = comparison["runs"]
    body = ["<h2>runs</h2>", table(["", "run directory", "verdict"], [
        f"<td>{esc(r['label'])}</td><td>{esc(r['path'])}</td><td>{esc((r.get('verdict') or {}).get('type', ''))}</td>"
        for r in runs])]
    if comparison.get("config_differences"):
        labels = [r["label"] for r in runs]
        body += ["<h2>config differences</h2>", table(["setting", *labels], [
            f"<td>{esc(k)}</td>" + "".join(f"<td>{esc(v)}</td>" for v in values)
            for k, values in comparison["config_differences"].items()])]
    for name, t in comparison["tasks"].items():
        rows = []
        for key, m in t["metrics"].items():
            cells = "".join(stat_cells(v) for v in m["values"])
            for d in m["differences"]:
                cls = " class=\"sig\"" if d.get("significant") else ""
                cells += (f"<td{cls}>{num(d.get('diff'))} [{num(d['ci'][0])}, {num(d['ci'][1])}] "
                          f"p={num(d.get('p_holm'), 3)}{' significant' if d.get('significant') else ''}</td>")
            rows.append(f"<td>{esc(key)}</td>{cells}")
        head = ["metric"]
        for r in runs:
            head += [f"{r['label']} mean", "95% CI"]
        head += [f"{r['label']} - {runs[0]['label']}" for r in runs[1:]]
        body += [f"<h2>{esc(name)}</h2>", table(head, rows)]
    body += figure_html(comparison.get("_figures", []))
    return page("deval compare", body, COMPARE)


def write(path: Path, text: str) -> Path:
    path = Path(path)
    from deval.errors import ConfigError

    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror}); choose another --html file") from None
    return path
