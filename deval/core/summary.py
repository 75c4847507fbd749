"""From measured steps to the summary: per-task metrics with intervals and null references (verdict: core/verdict.py)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deval.core import metrics
from deval.core.protocol import Step
from deval.core.references import null_references
from deval.core.tasks import Task
from deval.core.verdict import verdict  # noqa: F401  (the verdict is read from these summaries)

# Our choice (docs/protocol.md): below this on-set mass a free-mode position is a format failure.
MIN_POSITION_MASS = 0.2


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


def interval_stat(per_run: np.ndarray, seed: int, name: str) -> dict:
    """{"mean": mean over runs (NaN ignored), "ci": 95% Student-t interval over runs} of per-run values.

    (Intervals were a percentile bootstrap, which under-covers over 10 runs; seed and name are kept in the
    signature so callers need not change.)"""
    values = np.asarray(per_run, dtype=float)
    mean = float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")
    lo, hi = metrics.mean_ci(values)
    return {"mean": mean, "ci": [lo, hi]}


def summarise_task(task: Task, steps: list[Step], seed: int, min_mass: float = MIN_POSITION_MASS,
                   positions: str = "free") -> dict:
    """Every per-task number of the report; means carry a 95% t interval over runs.

    In free mode a position whose on-set mass is below min_mass is a format failure: counted, and left out of
    e-score, ATVD, entropy, volatility, extremity and quota r (its P_token is a renormalised sliver)."""
    arrays = TaskArrays.from_steps(task, steps)
    p_task = task.p_task
    present = arrays.sampled != metrics.PAD
    mass = metrics.on_set_mass(arrays.probs)
    failed = present & ~(np.nan_to_num(mass, nan=0.0) >= min_mass) if positions == "free" else np.zeros_like(present)
    ptok = metrics.p_token(arrays.probs)
    ptok = np.where(failed[..., None], np.nan, ptok)
    e_t = np.max(np.where(np.isnan(ptok), -np.inf, ptok), axis=-1)
    e_t = np.where(np.isinf(e_t), np.nan, e_t)
    tv_t = metrics.tv(ptok, p_task)
    run_counts = metrics.counts(arrays.sampled, len(task.items))
    pooled = run_counts.sum(axis=0)
    e_runs = metrics.run_means(e_t)
    by_step = np.where(present, mass, np.nan)
    with np.errstate(invalid="ignore"):
        mass_by_step = [None if np.all(np.isnan(c)) else float(np.nanmean(c)) for c in by_step.T]
    summary = {
        "e_score": interval_stat(e_runs, seed, "e_score"),
        "atvd": interval_stat(metrics.run_means(tv_t), seed, "atvd"),
        "result_tvd": interval_stat(metrics.result_tvd(run_counts, p_task), seed, "result_tvd"),
        "on_set_mass": interval_stat(metrics.run_means(np.where(present, mass, np.nan)), seed, "on_set_mass"),
        "volatility": interval_stat(metrics.run_means(metrics.volatility(ptok)), seed, "volatility"),
        "quota_r": interval_stat(metrics.quota_r(ptok, arrays.sampled, p_task), seed, "quota_r"),
        "quota_r_note": metrics.quota_note(ptok, arrays.sampled, p_task),
        "entropy": interval_stat(metrics.run_means(metrics.entropy(ptok)), seed, "entropy"),
        "extremity": interval_stat(metrics.extremity(e_runs, p_task), seed, "e_score"),
        "invalid_rate": metrics.invalid_rate(arrays.sampled),
        "chi2_p": metrics.chi2_p(pooled, p_task),
        "pooled_result_tvd": float(metrics.result_tvd(pooled[None, :], p_task)[0]),
        "counts": {x: int(c) for x, c in zip(task.items, pooled)},
        "p_task": {x: w for x, w in zip(task.items, task.weights)},
        "mean_p_token": {x: _f(v) for x, v in zip(task.items, _nanmean(ptok))},
        "runs": int(arrays.probs.shape[0]),
        "positions": int(np.sum(present)),
        "positions_mode": positions,
        "min_mass": float(min_mass),
        "format_failures": int(failed.sum()),
        "format_failure_rate": float(failed.sum() / present.sum()) if present.any() else float("nan"),
        "on_set_mass_by_step": mass_by_step,
        "runs_identical": _runs_identical(steps),
        "interval": "95% Student-t over runs",
        "kept_coverage": interval_stat(metrics.run_means(metrics.kept_coverage(arrays.probs, p_task)), seed,
                                        "kept_coverage"),
        "tail_mass": interval_stat(metrics.run_means(np.where(arrays.sampled == metrics.PAD, np.nan, arrays.tail)),
                                    seed, "tail_mass"),
        "flags": list(arrays.flags),
    }
    summary.update(_tail_bounds(arrays, p_task, present & ~failed))
    summary["references"] = null_references(p_task, arrays.probs.shape[0], present.sum(axis=1), seed)
    return summary


def _nanmean(ptok: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        flat = ptok.reshape(-1, ptok.shape[-1])
        keep = ~np.isnan(flat).any(axis=1)
        return flat[keep].mean(axis=0) if keep.any() else np.full(ptok.shape[-1], np.nan)


def _runs_identical(steps: list[Step]) -> bool:
    """True when every run's sampled texts are the same sequence (the only case a zero-width interval is honest)."""
    runs: dict[int, list[tuple[int, str]]] = {}
    for s in steps:
        runs.setdefault(s.run, []).append((s.step, s.text))
    texts = {tuple(t for _, t in sorted(v)) for v in runs.values()}
    return len(texts) <= 1


def _tail_bounds(arrays: TaskArrays, p_task: np.ndarray, kept: np.ndarray) -> dict:
    """ATVD and e-score as [best, worst] over where an unseen top-k tail could lie (means over runs), over the
    positions the ATVD and e-score themselves keep (format failures left out, as there)."""
    present = arrays.sampled != metrics.PAD
    tv_lo, tv_hi, e_lo, e_hi = metrics.tail_bounds(np.nan_to_num(arrays.probs), arrays.missing & present[..., None],
                                                   arrays.tail, arrays.tail_cap, p_task)

    def mean(x: np.ndarray) -> float:
        runs = metrics.run_means(np.where(kept, x, np.nan))
        return float(np.nanmean(runs)) if np.any(~np.isnan(runs)) else float("nan")

    return {"atvd_bounds": [mean(tv_lo), mean(tv_hi)], "e_score_bounds": [mean(e_lo), mean(e_hi)],
            "missing_rate": float(arrays.missing[present].any(axis=-1).mean()) if present.any() else float("nan")}


def _f(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)
