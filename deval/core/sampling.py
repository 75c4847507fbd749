"""Temperature and decoding filters on log-probability vectors (pure numpy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FILTER_ORDERS = ("filters-first", "temperature-first")


@dataclass(frozen=True)
class Filters:
    """Decoding filters deval applies to a distribution before sampling.

    order 'filters-first' is llama.cpp's default chain (top-k, top-p, min-p, then temperature);
    'temperature-first' is Hugging Face's and the min-p paper's (temperature, then the filters).
    """

    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    order: str = "filters-first"

    @property
    def active(self) -> bool:
        return self.top_k is not None or self.top_p is not None or self.min_p is not None

    def to_dict(self) -> dict:
        return {"top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p, "order": self.order}


def logsumexp(x: np.ndarray, axis: int = -1, keepdims: bool = False) -> np.ndarray:
    """log sum exp along an axis, stable, -inf for all -inf (a lean version of scipy's, for hot loops)."""
    x = np.asarray(x, dtype=np.float64)
    top = np.max(x, axis=axis, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - top), axis=axis, keepdims=True)) + top
    return out if keepdims else np.squeeze(out, axis=axis)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Normalised log-probabilities along the last axis, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x - logsumexp(x, keepdims=True)


def with_temperature(logp: np.ndarray, temperature: float) -> np.ndarray:
    """log softmax(logp / T): exact for any set of tokens whose T=1 log-probabilities are known."""
    return log_softmax(np.asarray(logp, dtype=np.float64) / temperature)


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
    """Log-probabilities of the distribution a sampler draws from; -inf for filtered-out tokens.

    `logp` must be normalised log-probabilities (a log-softmax row)."""
    if not filters.active:
        return logp if temperature == 1.0 else with_temperature(logp, temperature)  # rows come normalised
    if filters.order == "temperature-first":
        tempered = with_temperature(logp, temperature)
        keep = kept_mask(tempered, filters)
        return _restrict(tempered, keep)
    keep = kept_mask(logp, filters)
    return with_temperature(_restrict(logp, keep), temperature)


def _restrict(logp: np.ndarray, keep: np.ndarray) -> np.ndarray:
    masked = np.where(keep, logp, -np.inf)
    return masked - logsumexp(masked)


SEEDS = 2**32 - 1  # a draw's seed is a uint32 below llama.cpp's LLAMA_DEFAULT_SEED (0xFFFFFFFF: "random")
_MT19937 = np.random.MT19937(0)  # scratch: re-seeded under its lock at each use, so seed_uniform stays pure


def draw_seed(rng: np.random.Generator) -> int:
    """The 32-bit seed of one draw, from the run's generator."""
    return int(rng.integers(SEEDS))


def seed_uniform(seed: int) -> float:
    """The uniform number llama.cpp's `dist` sampler draws with `seed`: std::uniform_real_distribution<double> over
    std::mt19937(seed), as libstdc++ makes it from two 32-bit outputs, (a + b 2^32) / 2^64.

    deval draws with it so that a server given the seed draws the very token deval would (issue 11)."""
    with _MT19937.lock:
        _MT19937._legacy_seeding(int(seed))  # std::mt19937(seed): init_genrand
        a, b = (float(x) for x in _MT19937.random_raw(2))
    u = (a + b * 2.0**32) / 2.0**64
    return u if u < 1.0 else math.nextafter(1.0, 0.0)


def draw(logp: np.ndarray, rng: np.random.Generator) -> int:
    """One index drawn from exp(logp) with an explicit generator: llama.cpp's `dist` sampler (inverse CDF in index
    order, float64 sums) at the uniform of a seed taken from rng."""
    return draw_at(logp, seed_uniform(draw_seed(rng)))


def draw_at(logp: np.ndarray, u: float) -> int:
    """The index the inverse CDF of exp(logp) gives at the uniform number u, in index order (as llama.cpp's `dist`
    sampler walks an unsorted row)."""
    cdf = np.cumsum(np.exp(logp - np.max(logp)))  # unnormalised is fine: the draw is scaled by cdf[-1]
    return int(min(np.searchsorted(cdf, u * cdf[-1], side="right"), len(cdf) - 1))
