"""From measured steps to the summary: per-task metrics with intervals, and the D/E verdict."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from deval.core import metrics
from deval.core.protocol import Step
from deval.core.tasks import Task

# Our reconstruction of the paper's verdict (see README): thresholds are options, named here.
D_THRESHOLD = 0.5  # normalised extremity at or above which a model is a D-model
MIN_ON_SET_MASS = 0.5  # below this mean on-set mass the model does not follow the task format
VERDICT_TASK = "flat"  # the paper classifies on the flat task at temperature 1


@dataclass(frozen=True)
class TaskArrays:
    """Steps of one task as padded arrays: probs [R, T, K], sampled [R, T], tail [R, T].

    missing [R, T, K] marks items absent from a visible top-k; tail_cap [R, T] is the most one unseen token can
    hold (the tail itself where a backend does not say).
    """

    probs: np.ndarray
    sampled: np.ndarray
    tail: np.ndarray
    flags: tuple[str, ...]
    missing: np.ndarray | None = None
    tail_cap: np.ndarray | None = None

    @classmethod
    def from_steps(cls, task: Task, steps: list[Step]) -> "TaskArrays":
        k = len(task.items)
        runs = sorted({s.run for s in steps})
        index = {r: i for i, r in enumerate(runs)}
        t_max = max((s.step for s in steps), default=-1) + 1
        probs = np.full((len(runs), t_max, k), np.nan)
        sampled = np.full((len(runs), t_max), metrics.PAD, dtype=int)
        tail = np.zeros((len(runs), t_max))
        missing = np.zeros((len(runs), t_max, k), dtype=bool)
        tail_cap = np.zeros((len(runs), t_max))
        flags: set[str] = set()
        for s in steps:
            i = index[s.run]
            probs[i, s.step] = s.probs
            sampled[i, s.step] = metrics.INVALID if s.sampled is None else s.sampled
            tail[i, s.step] = s.tail
            missing[i, s.step, list(s.missing)] = True
            tail_cap[i, s.step] = s.tail if s.tail_cap is None else s.tail_cap
            flags.update(s.flags)
        return cls(probs=probs, sampled=sampled, tail=tail, flags=tuple(sorted(flags)), missing=missing,
                   tail_cap=tail_cap)


def bootstrap_stat(per_run: np.ndarray, seed: int, name: str) -> dict:
    """{"mean": mean over runs (NaN ignored), "ci": seeded 95% bootstrap interval over runs} of per-run values.

    Each quantity resamples runs with its own generator, keyed by (seed, name): adding a metric moves no other
    interval, and quantities that share a name (e-score and extremity) share their resamples."""
    values = np.asarray(per_run, dtype=float)
    mean = float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")
    lo, hi = metrics.bootstrap_ci(values, np.random.default_rng([seed, zlib.crc32(name.encode())]))
    return {"mean": mean, "ci": [lo, hi]}


def summarise_task(task: Task, steps: list[Step], seed: int) -> dict:
    """Every per-task number of the report; means carry a seeded 95% bootstrap interval over runs."""
    arrays = TaskArrays.from_steps(task, steps)
    p_task = task.p_task
    ptok = metrics.p_token(arrays.probs)
    e_t = np.max(np.where(np.isnan(ptok), -np.inf, ptok), axis=-1)
    e_t = np.where(np.isinf(e_t), np.nan, e_t)
    tv_t = metrics.tv(ptok, p_task)
    run_counts = metrics.counts(arrays.sampled, len(task.items))
    pooled = run_counts.sum(axis=0)
    e_runs = metrics.run_means(e_t)
    summary = {
        "e_score": bootstrap_stat(e_runs, seed, "e_score"),
        "atvd": bootstrap_stat(metrics.run_means(tv_t), seed, "atvd"),
        "result_tvd": bootstrap_stat(metrics.result_tvd(run_counts, p_task), seed, "result_tvd"),
        "on_set_mass": bootstrap_stat(metrics.run_means(metrics.on_set_mass(arrays.probs)), seed,
                                      "on_set_mass"),
        "volatility": bootstrap_stat(metrics.run_means(metrics.volatility(ptok)), seed, "volatility"),
        "quota_r": bootstrap_stat(metrics.quota_r(ptok, arrays.sampled, p_task), seed, "quota_r"),
        "entropy": bootstrap_stat(metrics.run_means(metrics.entropy(ptok)), seed, "entropy"),
        "extremity": bootstrap_stat(metrics.extremity(e_runs, p_task), seed, "e_score"),
        "invalid_rate": metrics.invalid_rate(arrays.sampled),
        "chi2_p": metrics.chi2_p(pooled, p_task),
        "pooled_result_tvd": float(metrics.result_tvd(pooled[None, :], p_task)[0]),
        "counts": {x: int(c) for x, c in zip(task.items, pooled)},
        "p_task": {x: w for x, w in zip(task.items, task.weights)},
        "mean_p_token": {x: float(v) for x, v in zip(task.items, np.nanmean(ptok, axis=(0, 1)))},
        "runs": int(arrays.probs.shape[0]),
        "positions": int(np.sum(arrays.sampled != metrics.PAD)),
        "kept_coverage": bootstrap_stat(metrics.run_means(metrics.kept_coverage(arrays.probs, p_task)), seed,
                                        "kept_coverage"),
        "tail_mass": bootstrap_stat(metrics.run_means(np.where(arrays.sampled == metrics.PAD, np.nan, arrays.tail)),
                                    seed, "tail_mass"),
        "flags": list(arrays.flags),
    }
    summary.update(_tail_bounds(arrays, p_task))
    return summary


def _tail_bounds(arrays: TaskArrays, p_task: np.ndarray) -> dict:
    """ATVD and e-score as [best, worst] over where an unseen top-k tail could lie (means over runs)."""
    present = arrays.sampled != metrics.PAD
    tv_lo, tv_hi, e_lo, e_hi = metrics.tail_bounds(np.nan_to_num(arrays.probs), arrays.missing & present[..., None],
                                                   arrays.tail, arrays.tail_cap, p_task)

    def mean(x: np.ndarray) -> float:
        runs = metrics.run_means(np.where(present, x, np.nan))
        return float(np.nanmean(runs)) if np.any(~np.isnan(runs)) else float("nan")

    return {"atvd_bounds": [mean(tv_lo), mean(tv_hi)], "e_score_bounds": [mean(e_lo), mean(e_hi)],
            "missing_rate": float(arrays.missing[present].any(axis=-1).mean()) if present.any() else float("nan")}


def verdict(task_summaries: dict[str, dict], temperature: float,
            d_threshold: float = D_THRESHOLD, min_on_set: float = MIN_ON_SET_MASS) -> dict:
    """D, E or undetermined, with a one-line reason in plain words (our reconstruction of the paper's rule)."""
    if not task_summaries:
        return {"type": "undetermined", "extremity": None, "task": None, "reason": "no task was measured"}
    name = VERDICT_TASK if VERDICT_TASK in task_summaries else next(iter(task_summaries))
    s = task_summaries[name]
    ext, (lo, hi) = s["extremity"]["mean"], s["extremity"]["ci"]
    e_score, mass = s["e_score"]["mean"], s["on_set_mass"]["mean"]
    top = max(s["p_task"].values())
    where = f"on {name}" + ("" if temperature == 1.0 else f" at temperature {temperature:g} (the paper uses 1)")
    if np.isnan(mass) or mass < min_on_set:
        return {"type": "undetermined", "extremity": _f(ext), "task": name,
                "reason": f"{where} only {mass:.0%} of the next-token mass falls on the task's items "
                          f"(needs {min_on_set:.0%}): the model does not follow the task format"}
    if np.isnan(ext):
        return {"type": "undetermined", "extremity": None, "task": name, "reason": f"{where} no step was measured"}
    steps_say = (f"{where} each step puts on average {e_score:.0%} of its item mass on one item "
                 f"(P_task's largest is {top:.0%}); extremity {ext:.2f} [{lo:.2f}, {hi:.2f}]")
    if lo < d_threshold <= hi:
        return {"type": "undetermined", "extremity": _f(ext), "task": name,
                "reason": f"{steps_say} straddles the threshold {d_threshold}"}
    rtvd = s["pooled_result_tvd"]
    if ext >= d_threshold:
        aggregate = ("yet the pooled output still matches P_task" if rtvd < 0.15 else
                     "and the pooled output is off P_task too")
        return {"type": "D", "extremity": _f(ext), "task": name,
                "reason": f"{steps_say} >= {d_threshold}: nearly one-hot steps, {aggregate} "
                          f"(result TVD {rtvd:.2f})"}
    return {"type": "E", "extremity": _f(ext), "task": name,
            "reason": f"{steps_say} < {d_threshold}: stable steps close to P_task (ATVD {s['atvd']['mean']:.2f})"}


def _f(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)
