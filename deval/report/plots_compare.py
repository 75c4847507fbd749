"""The comparison figure: per task, each metric's difference to the first run with its Welch interval."""

from __future__ import annotations

import numpy as np

from deval.report.plots import COLOURS, new_figure, safe_name


def compare_figures(data: dict) -> list:
    out = []
    runs = data["runs"]
    for name, t in data["tasks"].items():
        keys = list(t["metrics"])
        fig, axes = new_figure(7.5, 1.0 + 0.4 * len(keys) * max(len(runs) - 1, 1) ** 0.5)
        ax = axes[0, 0]
        ys = np.arange(len(keys))
        width = 0.6 / max(len(runs) - 1, 1)
        for j, run in enumerate(runs[1:]):
            for i, key in enumerate(keys):
                d = t["metrics"][key]["differences"][j]
                if d.get("diff") is None:
                    continue
                lo, hi = d["ci"]
                y = ys[i] + (j - (len(runs) - 2) / 2) * width
                err = [[d["diff"] - lo], [hi - d["diff"]]] if lo is not None else None
                ax.errorbar(d["diff"], y, xerr=err, fmt="o" if d.get("significant") else "o", capsize=3,
                            markersize=5, color=COLOURS[j % len(COLOURS)],
                            markerfacecolor=COLOURS[j % len(COLOURS)] if d.get("significant") else "white",
                            label=f"{run['label']} - {runs[0]['label']}" if i == 0 else None)
        ax.axvline(0, color="#555555", linewidth=1)
        ax.set_yticks(ys, keys)
        ax.set_ylim(len(keys) - 0.5, -0.5)
        ax.set_xlabel("difference of means over runs, 95% Welch interval (filled: significant after Holm)")
        ax.set_title(f"{name}: each run against {runs[0]['label']}")
        ax.legend(fontsize=7, loc="best")
        out.append((f"compare-{safe_name(name)}", fig))
    return out
