"""Null references by simulation: what an ideal E sampler and an ideal one-hot D sampler score on the same task,
with the same runs and positions per run (our reconstruction of the paper's two poles)."""

from __future__ import annotations

import zlib

import numpy as np

N_SIM = 400  # simulated profiles per reference
CHUNK_ELEMENTS = 1 << 20  # simulated positions held at once (a few arrays of this many numbers)
KEYS = ("atvd", "volatility", "extremity", "e_score", "result_tvd")


def _summary(values: np.ndarray) -> dict:
    """Mean over the simulated profiles and the central 95% of them."""
    return {"mean": float(values.mean()), "range": [float(np.quantile(values, 0.025)),
                                                    float(np.quantile(values, 0.975))]}


def _run_mean(x: np.ndarray, m: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per simulated profile: the mean over runs of each run's mean over its positions (m marks them)."""
    with np.errstate(invalid="ignore"):
        per_run = np.where(m, x, 0.0).sum(axis=-1) / np.maximum(count, 1)
    return np.nanmean(np.where(count > 0, per_run, np.nan), axis=-1)


def null_references(p_task: np.ndarray, runs: int, steps_per_run: np.ndarray, seed: int, n_sim: int = N_SIM) -> dict:
    """{metric: {"E": {"mean", "range"}, "D": {...}}} for ATVD, volatility, extremity, e-score and result TVD.

    The ideal E sampler has P_token = P_task at every step; the ideal D sampler puts a one-hot P_token on an item
    drawn from P_task at every step. Both emit items following P_task, so they share the result-TVD reference."""
    p_task = np.asarray(p_task, dtype=float)
    steps_per_run = np.asarray(steps_per_run, dtype=int)
    k, t_max = len(p_task), max(int(steps_per_run.max(initial=0)), 1)
    rng = np.random.default_rng([seed, zlib.crc32(b"null-references")])
    mask = np.arange(t_max)[None, :] < steps_per_run[:, None]  # [R, T]
    n = np.maximum(mask.sum(axis=1), 1)
    pair_mask = mask[:, 1:] & mask[:, :-1]
    parts = []  # simulated profiles a chunk at a time, so memory stays bounded however long the runs
    chunk = max(1, CHUNK_ELEMENTS // (runs * t_max or 1))
    for start in range(0, n_sim, chunk):  # the draws continue one stream: the same picks as one big draw
        picks = rng.choice(k, size=(min(chunk, n_sim - start), runs, t_max), p=p_task / p_task.sum())
        tv_d = 1.0 - p_task[picks]  # TV(one-hot on x, P_task) = 1 - P_task(x)
        changes = (picks[..., 1:] != picks[..., :-1]).astype(float)  # TV between two one-hots: 1 if they differ
        counts = np.stack([np.where(mask, picks == i, False).sum(axis=-1) for i in range(k)], axis=-1)
        parts.append((_run_mean(tv_d, mask, n), _run_mean(changes, pair_mask, pair_mask.sum(axis=1)),
                      (0.5 * np.abs(counts / n[:, None] - p_task).sum(axis=-1)).mean(axis=-1)))
    atvd_d, volatility_d, result_tvd = (np.concatenate(x) for x in zip(*parts))
    top = float(p_task.max())
    zeros, ones = np.zeros(n_sim), np.ones(n_sim)
    d = {"atvd": atvd_d, "volatility": volatility_d,
         "extremity": ones, "e_score": ones, "result_tvd": result_tvd}
    e = {"atvd": zeros, "volatility": zeros, "extremity": zeros, "e_score": zeros + top, "result_tvd": result_tvd}
    return {key: {"E": _summary(e[key]), "D": _summary(d[key])} for key in KEYS}
