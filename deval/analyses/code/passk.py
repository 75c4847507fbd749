"""pass@k by the unbiased estimator, Δpass, and means over problems with bootstrap intervals (pure functions)."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np

from deval.core.metrics import bootstrap_ci

KS = (1, 10, 100)


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that k of the n samples drawn without replacement hold a pass.

    Computed in exact integers (Fraction), then rounded once to float64 (Chen et al. 2021's estimator)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return float(1 - Fraction(comb(n - c, k), comb(n, k)))


def ks_for(n: int, ks: tuple[int, ...] = KS) -> tuple[int, ...]:
    """The k in `ks` that n samples per problem allow."""
    return tuple(k for k in ks if k <= n)


def mean_ci(values, rng: np.random.Generator) -> dict:
    """Mean over problems with a 95% percentile-bootstrap interval over problems."""
    v = np.asarray(values, dtype=np.float64)
    lo, hi = bootstrap_ci(v, rng)
    return {"mean": float(v.mean()) if len(v) else float("nan"), "ci": [lo, hi], "problems": int(len(v))}


def summarise_counts(counts: list[tuple[int, int]], rng: np.random.Generator, ks: tuple[int, ...] = KS) -> dict:
    """pass@k and Δpass = pass@k - pass@1 over problems, from (n, c) per problem; k up to the smallest n."""
    if not counts:
        return {"pass@k": {}, "delta_pass": {}, "samples_per_problem": 0}
    n_min = min(n for n, _ in counts)
    per_k = {k: np.array([pass_at_k(n, c, k) for n, c in counts]) for k in ks_for(n_min, ks)}
    out = {"samples_per_problem": n_min, "pass@k": {str(k): mean_ci(v, rng) for k, v in per_k.items()}}
    out["delta_pass"] = {str(k): mean_ci(v - per_k[1], rng) for k, v in per_k.items() if k > 1}
    return out
