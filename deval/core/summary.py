"""From measured steps to the summary: per-task metrics with intervals and null references (verdict: core/verdict.py)."""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import Iterable

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
    def from_steps(cls, task: Task, steps: Iterable[Step]) -> "TaskArrays":
        return StepCollector.of(task, steps).arrays()


class StepCollector:
    """One task's steps as they stream past, kept as the few numbers the summary reads (about 8 bytes per item
    and position): a 100,000-step profile never holds its Step records. arrays() equals TaskArrays of the steps."""

    def __init__(self, task: Task):
        self.k = len(task.items)
        self._run, self._step, self._sampled = array("q"), array("q"), array("q")
        self._probs, self._tail, self._tail_cap = array("d"), array("d"), array("d")
        self._missing: list[tuple[int, int]] = []  # (entry, item index) of items absent from a visible top-k
        self._flags: set[str] = set()
        self._text_ids: dict[str, int] = {}  # each distinct sampled text once; entries hold its number
        self._text = array("q")

    @classmethod
    def of(cls, task: Task, steps: Iterable[Step]) -> "StepCollector":
        collector = cls(task)
        for s in steps:
            collector.add(s)
        return collector

    def __len__(self) -> int:
        return len(self._run)

    def add(self, s: Step) -> None:
        if len(s.probs) != self.k:
            raise ValueError(f"step {s.step} of run {s.run} has {len(s.probs)} probabilities for {self.k} items")
        entry = len(self._run)
        self._run.append(s.run)
        self._step.append(s.step)
        self._sampled.append(metrics.INVALID if s.sampled is None else s.sampled)
        self._probs.extend(math.nan if p is None else p for p in s.probs)  # a record holds NaN as null
        self._tail.append(s.tail)
        self._tail_cap.append(s.tail if s.tail_cap is None else s.tail_cap)
        self._missing.extend((entry, i) for i in s.missing)
        self._flags.update(s.flags)
        self._text.append(self._text_ids.setdefault(s.text, len(self._text_ids)))

    def arrays(self) -> TaskArrays:
        """Padded arrays: runs in order of their number, positions by step (a later duplicate overwrites)."""
        run = np.frombuffer(self._run, dtype=np.int64) if len(self) else np.zeros(0, dtype=np.int64)
        step = np.frombuffer(self._step, dtype=np.int64) if len(self) else np.zeros(0, dtype=np.int64)
        runs, i = np.unique(run, return_inverse=True)
        t_max = int(step.max()) + 1 if len(self) else 0
        probs = np.full((len(runs), t_max, self.k), np.nan)
        sampled = np.full((len(runs), t_max), metrics.PAD, dtype=int)
        tail = np.zeros((len(runs), t_max))
        missing = np.zeros((len(runs), t_max, self.k), dtype=bool)
        tail_cap = np.zeros((len(runs), t_max))
        if len(self):
            probs[i, step] = np.frombuffer(self._probs, dtype=np.float64).reshape(-1, self.k)
            sampled[i, step] = np.frombuffer(self._sampled, dtype=np.int64)
            tail[i, step] = np.frombuffer(self._tail, dtype=np.float64)
            tail_cap[i, step] = np.frombuffer(self._tail_cap, dtype=np.float64)
        for entry, item in self._missing:
            missing[i[entry], step[entry], item] = True
        return TaskArrays(probs=probs, sampled=sampled, tail=tail, flags=tuple(sorted(self._flags)), missing=missing,
                          tail_cap=tail_cap)

    def runs_identical(self) -> bool:
        """True when every run's sampled texts are the same sequence (the only case a zero-width interval is honest)."""
        if not len(self):
            return True
        run, step = np.frombuffer(self._run, dtype=np.int64), np.frombuffer(self._step, dtype=np.int64)
        order = np.lexsort((np.arange(len(self)), step, run))  # by run, then step; a later duplicate last
        run, step, text = run[order], step[order], np.frombuffer(self._text, dtype=np.int64)[order]
        last = np.append((run[1:] != run[:-1]) | (step[1:] != step[:-1]), True)
        run, text = run[last], text[last]
        _, counts = np.unique(run, return_counts=True)
        if np.any(counts != counts[0]):
            return False
        texts = text.reshape(len(counts), counts[0])
        return bool(np.all(texts == texts[0]))


def interval_stat(per_run: np.ndarray, seed: int, name: str) -> dict:
    """{"mean": mean over runs (NaN ignored), "ci": 95% Student-t interval over runs} of per-run values.

    (Intervals were a percentile bootstrap, which under-covers over 10 runs; seed and name are kept in the
    signature so callers need not change.)"""
    values = np.asarray(per_run, dtype=float)
    mean = float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")
    lo, hi = metrics.mean_ci(values)
    return {"mean": mean, "ci": [lo, hi]}


def summarise_task(task: Task, steps: Iterable[Step] | StepCollector, seed: int,
                   min_mass: float = MIN_POSITION_MASS, positions: str = "free") -> dict:
    """Every per-task number of the report; means carry a 95% t interval over runs.

    In free mode a position whose on-set mass is below min_mass is a format failure: counted, and left out of
    e-score, ATVD, entropy, volatility, extremity and quota r (its P_token is a renormalised sliver)."""
    collected = steps if isinstance(steps, StepCollector) else StepCollector.of(task, steps)
    arrays = collected.arrays()
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
        "runs_identical": collected.runs_identical(),
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
