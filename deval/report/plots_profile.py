"""Profile figures: P_token heat strip against P_task, per-step metrics with null references, the verdict axes."""

from __future__ import annotations

import numpy as np

from deval.core import metrics
from deval.core.summary import TaskArrays
from deval.report.plots import COLOURS, new_figure, safe_name

MAX_STEPS = 120  # steps drawn in a heat strip
VERDICT_METRICS = (("extremity", "extremity e~"), ("e_score", "e-score"), ("atvd", "ATVD"),
                   ("result_tvd", "result TVD"), ("on_set_mass", "on-set mass"))
D_THRESHOLD = 0.5  # shown on the extremity axis; the verdict's own threshold lives in core.summary


def profile_figures(summary: dict, context: dict) -> list:
    tasks, steps = context.get("tasks", {}), context.get("steps", [])
    out = []
    for name, s in summary.get("tasks", {}).items():
        task = tasks.get(name)
        task_steps = [st for st in steps if st.task == name]
        if task is None or not task_steps:
            continue
        arrays = TaskArrays.from_steps(task, task_steps)
        out.append((f"heat-{safe_name(name)}", heat_strip(task, s, arrays)))
        out.append((f"steps-{safe_name(name)}", step_metrics(task, arrays)))
    out.append(("verdict", verdict_axes(summary)))
    return out


def heat_strip(task, s: dict, arrays: TaskArrays):
    """Items by steps for the first run (shade = P_token, white dots = sampled), beside P_task, mean P_token and
    the share each item was sampled."""
    fig, axes = new_figure(8.0, 0.9 + 0.32 * len(task.items), 1, 2, gridspec_kw={"width_ratios": [4, 1.3]})
    ax, bars = axes[0]
    ptok = metrics.p_token(arrays.probs)[0][:MAX_STEPS]
    n = ptok.shape[0]
    im = ax.imshow(np.nan_to_num(ptok.T, nan=0.0), aspect="auto", cmap="viridis", vmin=0, vmax=1,
                   interpolation="nearest", extent=(0.5, n + 0.5, len(task.items) - 0.5, -0.5))
    sampled = arrays.sampled[0][:MAX_STEPS]
    hit = sampled >= 0
    ax.scatter(np.arange(1, n + 1)[hit], sampled[hit], s=9, c="white", edgecolors="black", linewidths=0.4,
               label="sampled item")
    ax.set_yticks(range(len(task.items)), task.items)
    ax.set_xlabel("step (run 1)")
    ax.set_title(f"{task.name}: P_token per step (colour) and the sampled item (dot)")
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="P_token")
    y = np.arange(len(task.items))
    counts = s.get("counts", {})
    total = max(sum(counts.values()), 1)
    series = [("P_task", [s.get("p_task", {}).get(x, w) for x, w in zip(task.items, task.weights)], "#555555"),
              ("mean P_token", [s.get("mean_p_token", {}).get(x) or 0.0 for x in task.items], COLOURS[0]),
              ("sampled share", [counts.get(x, 0) / total for x in task.items], COLOURS[3])]
    for i, (label, values, colour) in enumerate(series):
        bars.barh(y + (i - 1) * 0.27, values, height=0.27, color=colour, label=label)
    bars.set_yticks(y, [])
    bars.set_ylim(len(task.items) - 0.5, -0.5)
    bars.set_xlim(0, 1)
    bars.set_title("per item")
    bars.legend(fontsize=7, loc="lower right")
    return fig


def step_metrics(task, arrays: TaskArrays):
    """e-score, TV to P_task and on-set mass at each step: mean over runs, the spread of runs, and two null
    references: a calibrated model (P_token = P_task) and one-hot steps on items drawn from P_task."""
    ptok = metrics.p_token(arrays.probs)
    with np.errstate(invalid="ignore"):
        e_t = np.where(np.isnan(ptok).all(axis=-1), np.nan, np.nanmax(np.nan_to_num(ptok, nan=-1.0), axis=-1))
    p = task.p_task
    panels = [("e-score_t (top P_token)", e_t, float(p.max()), 1.0),
              ("TV(P_token_t, P_task)", metrics.tv(ptok, p), 0.0, float(1.0 - np.sum(p ** 2))),
              ("on-set mass m_t", metrics.on_set_mass(arrays.probs), 1.0, None)]
    fig, axes = new_figure(8.0, 5.4, 3, 1, sharex=True)
    x = np.arange(1, ptok.shape[1] + 1)
    for ax, (label, values, calibrated, one_hot) in zip(axes[:, 0], panels):
        with np.errstate(invalid="ignore"), _quiet():
            mean = np.nanmean(values, axis=0)
            lo, hi = np.nanpercentile(values, 2.5, axis=0), np.nanpercentile(values, 97.5, axis=0)
        ax.fill_between(x, lo, hi, color=COLOURS[0], alpha=0.2, linewidth=0, label="middle 95% of runs")
        ax.plot(x, mean, color=COLOURS[0], linewidth=1.4, label=f"mean over {values.shape[0]} runs")
        ax.axhline(calibrated, color="#2ca02c", linestyle="--", linewidth=1, label="calibrated (P_token = P_task)")
        if one_hot is not None:
            ax.axhline(one_hot, color="#d62728", linestyle=":", linewidth=1, label="one-hot steps (D null)")
        ax.set_ylabel(label, fontsize=8)
        ax.set_ylim(-0.02, 1.02)
    axes[0, 0].set_title(f"{task.name}: per-step metrics against the null references")
    axes[0, 0].legend(fontsize=7, ncol=2, loc="lower left")
    axes[-1, 0].set_xlabel("step")
    return fig


def verdict_axes(summary: dict):
    """Each task's extremity (the verdict's axis, with the D threshold) and its other metrics, with 95% intervals."""
    names = list(summary.get("tasks", {}))
    fig, axes = new_figure(8.0, 1.2 + 0.55 * len(VERDICT_METRICS) * max(len(names), 1) ** 0.5, 1, 1)
    ax = axes[0, 0]
    ys = np.arange(len(VERDICT_METRICS))
    width = 0.7 / max(len(names), 1)
    for i, name in enumerate(names):
        s = summary["tasks"][name]
        for j, (key, _) in enumerate(VERDICT_METRICS):
            stat = s.get(key) or {}
            mean, ci = stat.get("mean"), stat.get("ci") or [None, None]
            if mean is None:
                continue
            y = ys[j] + (i - (len(names) - 1) / 2) * width
            lo, hi = (ci[0] if ci[0] is not None else mean), (ci[1] if ci[1] is not None else mean)
            ax.errorbar(mean, y, xerr=[[mean - lo], [hi - mean]], fmt="o", color=COLOURS[i % len(COLOURS)],
                        capsize=3, markersize=4, label=name if j == 0 else None)
    ax.axvline(D_THRESHOLD, color="#d62728", linestyle=":", linewidth=1)
    ax.text(D_THRESHOLD, len(VERDICT_METRICS) - 0.45, " D threshold (extremity)", color="#d62728", fontsize=7)
    ax.set_yticks(ys, [label for _, label in VERDICT_METRICS])
    ax.set_ylim(len(VERDICT_METRICS) - 0.5, -0.5)
    ax.set_xlabel("value (dot: mean; bar: 95% t interval over runs)")
    v = summary.get("verdict") or {}
    ax.set_title(f"verdict: {v.get('type', 'n/a')} (read on {v.get('task') or 'n/a'})")
    if names:
        ax.legend(fontsize=7, loc="best", title="task", title_fontsize=7, framealpha=0.6)
    return fig


class _quiet:
    """Silence numpy's 'all-NaN slice' warnings for steps no run reached."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        return self._w.__exit__(*exc)
