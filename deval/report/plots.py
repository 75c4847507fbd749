"""Figures of a run with matplotlib (Agg, no pyplot state): a registry from summary schema to figure builders,
and writing them as PNG and SVG. Run types added later register a builder under their schema family."""

from __future__ import annotations

import importlib
from pathlib import Path

from deval.errors import ConfigError

# schema family ('deval.profile' of 'deval.profile/1') -> "module:function(summary, context) -> [(name, Figure)]"
FIGURES: dict[str, str] = {
    "deval.profile": "deval.report.plots_profile:profile_figures",
    "deval.sweep": "deval.report.plots_dynamics:sweep_figures",
    "deval.calibration": "deval.report.plots_dynamics:calibration_figures",
    "deval.diversity": "deval.report.plots_dynamics:diversity_figures",
}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
DPI = 110


def register(family: str, builder: str) -> None:
    """Add figures for a new run type: `builder` is 'module:function' taking (summary, context)."""
    FIGURES[family] = builder


def family(schema) -> str:
    return str(schema or "").split("/")[0]


def require_matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("figures need matplotlib: pip install 'deval[plots]'") from None
    matplotlib.rcParams.update({"svg.fonttype": "none", "font.family": ["DejaVu Sans", "sans-serif"], "font.size": 9, "axes.titlesize": 10,
                                "axes.spines.top": False, "axes.spines.right": False})
    return matplotlib


def new_figure(width: float = 7.5, height: float = 3.2, rows: int = 1, cols: int = 1, **kw):
    """A Figure with its own Agg canvas (no pyplot, no global figure list) and its axes."""
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def figures(summary: dict, context: dict | None = None) -> list:
    """[(name, Figure)] for a run summary; a one-line error for a run type without figures."""
    builder = FIGURES.get(family(summary.get("schema")))
    if builder is None:
        raise ConfigError(f"no figures for runs of type {summary.get('schema')}; known: {', '.join(FIGURES)}")
    module, function = builder.split(":")
    return getattr(importlib.import_module(module), function)(summary, context or {})


def save_figures(figs: list, out: Path) -> list[Path]:
    """Write each figure as out/<name>.png and out/<name>.svg; the paths written."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {out} ({exc.strerror}); choose another --plots directory") from None
    written = []
    for name, fig in figs:
        for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
            path = out / f"{name}.{ext}"
            fig.savefig(path, format=ext, metadata=meta)
            written.append(path)
    return written


def svg_text(fig) -> str:
    """The figure as an inline <svg> element (no XML prolog, no external references)."""
    import io

    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    start, end = text.find("<metadata>"), text.find("</metadata>")
    return text[:start] + text[end + len("</metadata>"):] if 0 <= start < end else text


def png_bytes(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text))
