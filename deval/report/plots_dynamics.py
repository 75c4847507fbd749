"""Figures of sweeps (metrics against temperature, measured and derived), calibration (each cutoff rule's
precision and recall against the oracle) and diversity (distinct valid outputs per budget against the ideal)."""

from __future__ import annotations

import numpy as np

from deval.report.plots import COLOURS, new_figure, safe_name

SWEEP_PANELS = (("e_score", "e-score"), ("atvd", "ATVD"), ("result_tvd", "result TVD"), ("on_set_mass", "on-set mass"))
RULE_FAMILIES = (("oracle", "#2ca02c", "*"), ("none", "#555555", "s"), ("top-k", COLOURS[0], "o"),
                 ("top-p", COLOURS[3], "^"), ("min-p", COLOURS[4], "D"))


def _num(x) -> float:
    return float("nan") if x is None else float(x)


def sweep_figures(summary: dict, context: dict) -> list:
    out = []
    verdicts = summary.get("verdicts", {})
    for name, s in summary.get("tasks", {}).items():
        rows = s.get("rows", [])
        if not rows:
            continue
        fig, axes = new_figure(8.0, 5.0, 2, 2, sharex=True)
        t = np.array([r["temperature"] for r in rows], dtype=float)
        for ax, (key, label) in zip(axes.flat, SWEEP_PANELS):
            m = [r.get("measured", {}).get(key) or {} for r in rows]
            mean = np.array([_num(x.get("mean")) for x in m])
            lo = np.array([_num((x.get("ci") or [None, None])[0]) for x in m])
            hi = np.array([_num((x.get("ci") or [None, None])[1]) for x in m])
            ax.errorbar(t, mean, yerr=[np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)], fmt="o-",
                        color=COLOURS[0], capsize=3, markersize=4, label="measured (95% CI)")
            d = np.array([_num(((r.get("derived") or {}).get(key) or {}).get("mean")) for r in rows])
            if np.isfinite(d).any():
                ax.plot(t, d, "x--", color=COLOURS[1], label="derived from T=1", zorder=3)
            ax.set_ylabel(label)
            ax.set_ylim(-0.02, 1.02)
        for ax in axes[-1]:
            ax.set_xlabel("temperature")
        axes[0, 0].legend(fontsize=7)
        best = s.get("best_temperature")
        said = ", ".join(f"T={k}: {v}" for k, v in verdicts.items())
        fig.suptitle(f"{name}: metrics against temperature"
                     + (f" (ATVD lowest at T={best:g})" if best is not None else "") + f"\nverdicts {said}",
                     fontsize=9)
        out.append((f"sweep-{safe_name(name)}", fig))
    return out


def _rule_style(label: str) -> tuple[str, str]:
    for prefix, colour, marker in RULE_FAMILIES:
        if label.startswith(prefix):
            return colour, marker
    return "#000000", "o"


def calibration_figures(summary: dict, context: dict) -> list:
    out = []
    for name, s in summary.get("tasks", {}).items():
        steps = s.get("steps", {})
        fig, axes = new_figure(8.5, 3.6, 1, 2)
        ax, seq = axes[0]
        for group, filled in (("all", True), ("first", False)):
            for label, pr in (steps.get(group, {}).get("rules") or {}).items():
                colour, marker = _rule_style(label)
                ax.scatter(_num(pr.get("recall")), _num(pr.get("precision")), marker=marker, s=40,
                           facecolors=colour if filled else "none", edgecolors=colour,
                           label=label if group == "all" else None)
                if group == "all":
                    ax.annotate(label, (_num(pr.get("recall")), _num(pr.get("precision"))), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
        ax.set_xlim(-0.03, 1.05)
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel("recall |S∩V|/|V|")
        ax.set_ylabel("precision |S∩V|/|S|")
        ax.set_title("per step: filled = all steps, hollow = first token;\nthe oracle sits at (1, 1)")
        sequences = s.get("sequences", {})
        labels = list(sequences)
        y = np.arange(len(labels))
        seq.barh(y - 0.2, [_num(sequences[k].get("validity_rate")) for k in labels], height=0.4,
                 color=COLOURS[0], label="valid answers")
        seq.barh(y + 0.2, [_num(sequences[k].get("coverage")) for k in labels], height=0.4, color=COLOURS[3],
                 label="coverage of V")
        seq.set_yticks(y, labels, fontsize=7)
        seq.set_ylim(len(labels) - 0.5, -0.5)
        seq.set_xlim(0, 1)
        seq.set_title(f"sampled answers ({summary.get('samples', '?')} per rule)")
        seq.legend(fontsize=7, loc="lower right")
        fig.suptitle(f"{name}: cutoff rules against the oracle ({s.get('members', '?')} valid answers)", fontsize=9)
        out.append((f"calibration-{safe_name(name)}", fig))
    return out


def diversity_figures(summary: dict, context: dict) -> list:
    models = summary.get("models", {})
    if not models:
        return []
    fig, axes = new_figure(7.5, 3.8)
    ax = axes[0, 0]
    first = next(iter(models.values()))
    n = np.arange(1, len(first.get("ideal", [])) + 1)
    ax.plot(n, first.get("ideal", []), "--", color="#555555",
            label=f"ideal uniform sampler, K={summary.get('members')}")
    for i, (label, d) in enumerate(models.items()):
        colour = COLOURS[i % len(COLOURS)]
        ax.plot(n[:len(d.get("expected", []))], d.get("expected", []), "-", color=colour,
                label=f"{label}: expected (exact)")
        ax.step(np.arange(1, len(d.get("observed", [])) + 1), d.get("observed", []), where="post", color=colour,
                alpha=0.6, linewidth=1, label=f"{label}: observed")
    ax.set_xlabel("samples drawn")
    ax.set_ylabel("distinct valid outputs")
    ax.set_title(f"{summary.get('task')}: distinct valid outputs per budget (rule "
                 f"{(summary.get('rule') or {}).get('label')}, T={summary.get('temperature')})")
    ax.legend(fontsize=7)
    return [("diversity", fig)]
