"""Temperature and decoding filters on log-probability vectors (pure numpy)."""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from deval.backend import Filters


def with_temperature(logp: np.ndarray, temperature: float) -> np.ndarray:
    """log softmax(logp / T): exact for any set of tokens whose T=1 log-probabilities are known."""
    scaled = np.asarray(logp, dtype=np.float64) / temperature
    return scaled - logsumexp(scaled, axis=-1, keepdims=True)


def kept_mask(logp: np.ndarray, filters: Filters) -> np.ndarray:
    """Tokens kept by top-k, then top-p, then min-p (each applied to the survivors of the previous)."""
    logp = np.asarray(logp, dtype=np.float64)
    keep = np.isfinite(logp)
    if filters.top_k is not None and filters.top_k < keep.sum():
        kth = np.partition(logp[keep], -filters.top_k)[-filters.top_k]
        keep &= logp >= kth
        if keep.sum() > filters.top_k:  # ties at the cut: keep the first k by index, as a stable sort would
            idx = np.flatnonzero(keep)
            order = idx[np.argsort(-logp[idx], kind="stable")]
            keep = np.zeros_like(keep)
            keep[order[: filters.top_k]] = True
    if filters.top_p is not None and filters.top_p < 1.0:
        p = _renormalised(logp, keep)
        idx = np.flatnonzero(keep)
        order = idx[np.argsort(-p[idx], kind="stable")]
        cumulative = np.cumsum(p[order])
        n_keep = int(np.searchsorted(cumulative, filters.top_p, side="left")) + 1  # smallest set reaching top_p
        keep = np.zeros_like(keep)
        keep[order[:n_keep]] = True
    if filters.min_p is not None and filters.min_p > 0.0:
        p = _renormalised(logp, keep)
        keep &= p >= filters.min_p * p.max()
    return keep


def _renormalised(logp: np.ndarray, keep: np.ndarray) -> np.ndarray:
    masked = np.where(keep, logp, -np.inf)
    return np.exp(masked - logsumexp(masked))


def sampling_logprobs(logp: np.ndarray, temperature: float, filters: Filters) -> np.ndarray:
    """Log-probabilities of the distribution a sampler draws from; -inf for filtered-out tokens."""
    if filters.order == "temperature-first":
        tempered = with_temperature(logp, temperature)
        keep = kept_mask(tempered, filters)
        return _restrict(tempered, keep)
    keep = kept_mask(logp, filters)
    return with_temperature(_restrict(logp, keep), temperature)


def _restrict(logp: np.ndarray, keep: np.ndarray) -> np.ndarray:
    masked = np.where(keep, logp, -np.inf)
    return masked - logsumexp(masked)


def draw(logp: np.ndarray, rng: np.random.Generator) -> int:
    """One index drawn from exp(logp) with an explicit generator (inverse CDF, float64)."""
    p = np.exp(logp - logsumexp(logp))
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(p) - 1))
