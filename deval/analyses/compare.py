"""Profile runs side by side: tasks matched by name, each metric with its interval, the difference to the first
run with a Welch interval over runs (from the per-run values recomputed from the stored steps), Holm-adjusted
significance across a task's metrics, the verdicts and the config differences."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deval.analyses.result import Result, family, load
from deval.core import metrics
from deval.core.summary import TaskArrays
from deval.errors import ConfigError

METRICS = ("e_score", "atvd", "result_tvd", "on_set_mass", "volatility", "entropy", "extremity", "quota_r")
LEVEL = 0.95
ALPHA = 0.05
EXACT = 1e-9  # per-run values that vary less than this (relative) are one constant up to float rounding
CONFIG_KEYS = ("backend", "model", "temperature", "filters", "mode", "runs", "steps", "seed")


def per_run_values(task, steps) -> dict[str, np.ndarray]:
    """Each metric's value per run (the quantities the summary's intervals resample), from a task's steps."""
    arrays = TaskArrays.from_steps(task, steps)
    ptok = metrics.p_token(arrays.probs)
    e_t = np.max(np.where(np.isnan(ptok), -np.inf, ptok), axis=-1)
    e_runs = metrics.run_means(np.where(np.isinf(e_t), np.nan, e_t))
    return {
        "e_score": e_runs,
        "atvd": metrics.run_means(metrics.tv(ptok, task.p_task)),
        "result_tvd": metrics.result_tvd(metrics.counts(arrays.sampled, len(task.items)), task.p_task),
        "on_set_mass": metrics.run_means(metrics.on_set_mass(arrays.probs)),
        "volatility": metrics.run_means(metrics.volatility(ptok)),
        "entropy": metrics.run_means(metrics.entropy(ptok)),
        "extremity": np.asarray(metrics.extremity(e_runs, task.p_task), dtype=float),
        "quota_r": metrics.quota_r(ptok, arrays.sampled, task.p_task),
    }


def welch(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> dict:
    """mean(b) - mean(a) with a Welch t interval and two-sided p over runs (NaN runs left out)."""
    from scipy import stats

    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if len(a) < 2 or len(b) < 2:
        return {"diff": float(b.mean() - a.mean()) if len(a) and len(b) else None, "ci": [None, None], "p": None,
                "df": None, "note": "needs at least 2 runs on each side"}
    diff = float(b.mean() - a.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = float(np.sqrt(va + vb))
    if se <= EXACT * max(1.0, abs(float(a.mean()))):  # both sides constant over runs (to rounding): exact difference
        diff = 0.0 if abs(diff) <= EXACT * max(1.0, abs(float(a.mean()))) else diff
        return {"diff": diff, "ci": [diff, diff], "p": 1.0 if diff == 0 else 0.0, "df": None}
    df = float((va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return {"diff": diff, "ci": [diff - half, diff + half], "p": p, "df": df}


def holm(ps: list) -> list:
    """Holm-adjusted p-values (None stays None)."""
    order = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    out: list = [None] * len(ps)
    running, m = 0.0, len(order)
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def _config(result: Result) -> dict:
    m = result.manifest
    config = m.get("config", {})
    options = config.get("backend_options") or {}
    out = {k: config.get(k) for k in CONFIG_KEYS}
    out["route"] = options.get("route") or (m.get("backend") or {}).get("route")
    out["backend options"] = {k: v for k, v in options.items() if k != "route"} or None
    return out


@dataclass(frozen=True)
class Comparison:
    """The comparison as a dict (to_dict) and as a page (html)."""

    data: dict

    def to_dict(self) -> dict:
        return self.data

    @property
    def tasks(self) -> dict:
        return self.data["tasks"]

    def html(self, file: str | Path) -> Path:
        from deval.report.html import compare_page, write
        from deval.report.plots_compare import compare_figures

        return write(Path(file), compare_page({**self.data, "_figures": compare_figures(self.data)}))

    def __repr__(self) -> str:
        return f"Comparison({', '.join(r['label'] for r in self.data['runs'])}; tasks {', '.join(self.tasks)})"


def _labels(paths: list[Path], labels) -> list[str]:
    if labels:
        if len(labels) != len(paths):
            raise ConfigError(f"give one label per run ({len(paths)}), or none")
        return [str(x) for x in labels]
    names = [p.name or str(p) for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def compare_runs(paths, labels=None) -> Comparison:
    """Compare two or more finished profile runs; a one-line error when they share no task."""
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise ConfigError("compare needs at least two run directories")
    results = [load(p) for p in paths]
    for r in results:
        if family(r.summary.get("schema")) != "deval.profile":
            raise ConfigError(f"{r.path} is a {r.kind} run; compare takes profile runs (for a sweep, pass one of "
                              f"its temperature directories, such as {r.path / 'T1'})")
    names = _labels(paths, labels)
    contexts = [r.context() for r in results]
    common = [t for t in results[0].summary.get("tasks", {}) if all(t in r.summary.get("tasks", {}) for r in results)]
    if not common:
        listed = "; ".join(f"{n}: {', '.join(r.summary.get('tasks', {})) or 'none'}" for n, r in zip(names, results))
        raise ConfigError(f"these runs have no task in common ({listed}); compare runs of the same tasks")
    configs = [_config(r) for r in results]
    differ = {k: [c.get(k) for c in configs] for k in configs[0] if len({repr(c.get(k)) for c in configs}) > 1}
    tasks, notes = {}, []
    for name in common:
        defs = [ctx["tasks"][name] for ctx in contexts]
        if any(d.items != defs[0].items or tuple(d.weights) != tuple(defs[0].weights) for d in defs):
            notes.append(f"{name}: the runs define this task differently (items or P_task); compared anyway")
        values = [per_run_values(d, [s for s in ctx["steps"] if s.task == name]) for d, ctx in zip(defs, contexts)]
        rows = {}
        for key in METRICS:
            stats = [r.summary["tasks"][name].get(key) for r in results]
            if any(s is None for s in stats):
                continue
            rows[key] = {"values": stats, "differences": [welch(values[0][key], v[key]) for v in values[1:]]}
        for j in range(len(results) - 1):  # Holm across this task's metrics, per pair of runs
            adjusted = holm([rows[k]["differences"][j]["p"] for k in rows])
            for k, p in zip(rows, adjusted):
                d = rows[k]["differences"][j]
                d["p_holm"] = p
                d["significant"] = p is not None and p < ALPHA
        tasks[name] = {"metrics": rows}
    return Comparison({
        "schema": "deval.compare/1",
        "runs": [{"label": n, "path": str(r.path), "verdict": r.summary.get("verdict")} for n, r in zip(names, results)],
        "config_differences": differ, "tasks": tasks,
        "only_in_some": sorted({t for r in results for t in r.summary.get("tasks", {})} - set(common)),
        "notes": notes, "level": LEVEL, "alpha": ALPHA,
        "method": "difference of the mean over runs (run B - run A), Welch t interval over the per-run values; "
                  "significance: Holm-adjusted p < 0.05 across the task's metrics",
    })
