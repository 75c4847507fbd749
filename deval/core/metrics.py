"""Pure metric functions over arrays of item probabilities (see ../shared/reference/metrics.md).

Shapes: R runs, T item positions, K items. Ragged runs are padded with NaN probabilities and sampled = PAD.
"""

from __future__ import annotations

import numpy as np

INVALID = -1  # the model produced something off the item set at this position
PAD = -2  # no position here (the run was shorter)


def tv(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total variation distance along the last axis."""
    return 0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum(axis=-1)


def on_set_mass(probs: np.ndarray) -> np.ndarray:
    """m_t = sum_x p_t(x)."""
    return np.asarray(probs, dtype=float).sum(axis=-1)


def p_token(probs: np.ndarray) -> np.ndarray:
    """P_token_t = p_t / m_t, renormalised over the items; NaN where a step has no mass on the set."""
    probs = np.asarray(probs, dtype=float)
    mass = probs.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(mass > 0, probs / np.where(mass > 0, mass, 1.0), np.nan)


def kept_coverage(probs: np.ndarray, p_task: np.ndarray) -> np.ndarray:
    """P_task mass of the items a decoding filter kept (p_t(x) > 0) at each step; NaN at padded steps."""
    probs = np.asarray(probs, dtype=float)
    covered = (np.nan_to_num(probs, nan=0.0) > 0) @ np.asarray(p_task, dtype=float)
    return np.where(np.isnan(probs).all(axis=-1), np.nan, covered)


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats along the last axis (0 log 0 = 0)."""
    p = np.asarray(p, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return np.where(np.isnan(p).any(axis=-1), np.nan, terms.sum(axis=-1))


def extremity(e_score: np.ndarray | float, p_task: np.ndarray) -> np.ndarray | float:
    """e~ = (e-score - max P_task) / (1 - max P_task): 0 for a calibrated model, 1 for one-hot steps."""
    top = float(np.max(p_task))
    return (np.asarray(e_score) - top) / (1.0 - top)


def volatility(ptok: np.ndarray) -> np.ndarray:
    """v_t = TV(P_token_t, P_token_{t-1}) for t >= 2: shape [R, T-1]."""
    return tv(ptok[:, 1:], ptok[:, :-1])


def run_means(x: np.ndarray) -> np.ndarray:
    """Mean over the positions of each run, ignoring NaN; NaN for a run with no values."""
    x = np.asarray(x, dtype=float)
    counts = np.sum(~np.isnan(x), axis=1)
    sums = np.nansum(x, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def counts(sampled: np.ndarray, k: int) -> np.ndarray:
    """How often each item was sampled, per run: shape [R, K]."""
    sampled = np.asarray(sampled)
    return np.stack([np.bincount(row[row >= 0], minlength=k) for row in sampled]) if len(sampled) else np.zeros((0, k))


def result_tvd(run_counts: np.ndarray, p_task: np.ndarray) -> np.ndarray:
    """TV(P_result, P_task) per run, P_result from the valid sampled items; NaN for a run with none."""
    run_counts = np.asarray(run_counts, dtype=float)
    totals = run_counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_result = np.where(totals > 0, run_counts / np.where(totals > 0, totals, 1.0), np.nan)
    return tv(p_result, p_task)


def invalid_rate(sampled: np.ndarray) -> float:
    """Share of positions whose sampled output was off the item set."""
    sampled = np.asarray(sampled)
    present = sampled != PAD
    return float((sampled[present] == INVALID).mean()) if present.any() else float("nan")


def _quota_pairs(ptok: np.ndarray, sampled: np.ndarray, p_task: np.ndarray):
    """Per run: residual quota and deviation [T-1, K] (t >= 2), and which entries are valid."""
    ptok = np.asarray(ptok, dtype=float)
    sampled = np.asarray(sampled)
    r_runs, t_steps, k = ptok.shape
    onehot = np.zeros((r_runs, t_steps, k))
    valid = sampled >= 0
    rr, tt = np.nonzero(valid)
    onehot[rr, tt, sampled[valid]] = 1.0
    before = np.cumsum(onehot, axis=1)[:, :-1, :]  # c_{<t} for t = 2..T
    positions = np.arange(1, t_steps)[None, :, None]
    residual = p_task[None, None, :] - before / positions
    deviation = ptok[:, 1:, :] - p_task[None, None, :]
    ok = ~np.isnan(deviation) & (sampled[:, 1:, None] != PAD)
    return residual, deviation, ok


def _demeaned(x: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """x minus its mean over the valid steps, per item (column); 0 where not valid."""
    x = np.where(ok, x, 0.0)
    n = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, x.sum(axis=0) / np.maximum(n, 1), 0.0)
    return np.where(ok, x - mean, 0.0)


MIN_QUOTA_SAMPLES = 3  # valid (t, item) pairs a run needs for a quota r


def quota_r(ptok: np.ndarray, sampled: np.ndarray, p_task: np.ndarray) -> np.ndarray:
    """Per run, Pearson r between residual quota and deviation, each de-meaned within item, pooled over t >= 2.

    Our reconstruction: residual r_t(x) = P_task(x) - c_{<t}(x)/(t-1) with c counting valid samples before t;
    deviation d_t(x) = P_token_t(x) - P_task(x). Both are de-meaned per item over the run's steps, so a constant
    per-item offset (a model that is simply off P_task, with no feedback) does not read as compensation: r is 0
    in expectation for a model whose P_token does not depend on what it already wrote, > 0 for one that leans
    toward the items it still owes. NaN where a run has too few valid samples or a constant residual/deviation.
    """
    ptok = np.asarray(ptok, dtype=float)
    out = np.full(ptok.shape[0], np.nan)
    if ptok.shape[1] < 2:
        return out
    residual, deviation, ok = _quota_pairs(ptok, sampled, np.asarray(p_task, dtype=float))
    valid = (np.asarray(sampled) >= 0).sum(axis=1)
    for r in range(ptok.shape[0]):
        if valid[r] < MIN_QUOTA_SAMPLES or ok[r].sum() < MIN_QUOTA_SAMPLES:
            continue
        x, y = _demeaned(residual[r], ok[r])[ok[r]], _demeaned(deviation[r], ok[r])[ok[r]]
        if x.std() > 1e-12 and y.std() > 1e-12:
            out[r] = float(np.corrcoef(x, y)[0, 1])
    return out


def quota_note(ptok: np.ndarray, sampled: np.ndarray, p_task: np.ndarray) -> str | None:
    """Why quota r is n/a for some runs (None when every run has one)."""
    values = quota_r(ptok, sampled, p_task)
    missing = int(np.isnan(values).sum())
    if not missing:
        return None
    ptok = np.asarray(ptok, dtype=float)
    if ptok.shape[1] < 2:
        return "needs at least two positions per run"
    _, _, ok = _quota_pairs(ptok, sampled, np.asarray(p_task, dtype=float))
    few = int(((ok.sum(axis=(1, 2)) < MIN_QUOTA_SAMPLES) | ((np.asarray(sampled) >= 0).sum(axis=1)
                                                          < MIN_QUOTA_SAMPLES)).sum())
    parts = [f"{few} run(s) with fewer than {MIN_QUOTA_SAMPLES} valid samples"] if few else []
    if missing - few:
        parts.append(f"{missing - few} run(s) with a constant residual or deviation within every item")
    return "n/a for " + " and ".join(parts)


def chi2_p(pooled_counts: np.ndarray, p_task: np.ndarray) -> float:
    """Chi-square goodness-of-fit p-value of pooled counts against P_task (NaN without samples).

    Items with P_task = 0 are left out of the test; a count on such an item makes the fit impossible (p = 0).
    """
    pooled_counts = np.asarray(pooled_counts, dtype=float)
    n = pooled_counts.sum()
    if n == 0:
        return float("nan")
    support = np.asarray(p_task) > 0
    if pooled_counts[~support].sum() > 0:
        return 0.0
    observed = pooled_counts[support]
    expected = n * np.asarray(p_task)[support] / np.asarray(p_task)[support].sum()
    if len(observed) < 2:
        return 1.0
    from scipy import stats  # here, not at the top: `deval --help` must not pay for scipy

    return float(stats.chisquare(observed, expected).pvalue)


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Student-t interval of the mean along the last axis (NaN ignored); NaN where fewer than two values.

    Over runs (10 in the paper) the t interval covers at its nominal level where the percentile bootstrap is too
    narrow (about 90% at a nominal 95%, tests/test_intervals.py). Zero width only when every value is equal."""
    from scipy import stats  # imported here: scipy costs a second of start-up

    values = np.asarray(values, dtype=float)
    n = np.sum(~np.isnan(values), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nansum(values, axis=-1) / np.maximum(n, 1)
        var = np.nansum((values - mean[..., None]) ** 2, axis=-1) / np.maximum(n - 1, 1)
        half = stats.t.ppf(0.5 + level / 2.0, np.maximum(n - 1, 1)) * np.sqrt(var / np.maximum(n, 1))
    lo, hi = np.where(n >= 2, mean - half, np.nan), np.where(n >= 2, mean + half, np.nan)
    return lo, hi


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean over runs (NaN runs left out): (nan, nan) with fewer than two runs."""
    lo, hi = t_interval(np.asarray(values, dtype=float)[None, :], level)
    return float(lo[0]), float(hi[0])


def bootstrap_ci(values: np.ndarray, rng: np.random.Generator, n_boot: int = 2000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over runs (NaN runs are left out); kept for comparison only."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return (float("nan"), float("nan"))
    if len(values) == 1:
        return (float(values[0]), float(values[0]))
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return (float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha)))


# Our assumption (documented in docs/http-backends.md): no vocabulary holds more than this many distinct tokens
# that spell one item once whitespace and the separator are stripped, the spellings deval matches ("7", " 7",
# "\n7", ",7", ", 7", "7,", " 7,", "\t7", ...). An item visible in the top-k shows at least one of them.
SPELLINGS_PER_ITEM = 8


def tail_bounds(probs: np.ndarray, missing: np.ndarray, tail: np.ndarray, cap: np.ndarray,
                p_task: np.ndarray, spellings: int = SPELLINGS_PER_ITEM
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best and worst case of TV_t and e_t when only a top-k was visible: (tv_lo, tv_hi, e_lo, e_hi), [R, T].

    probs [R, T, K] are the visible item probabilities, missing [R, T, K] marks items absent from the top-k,
    tail [R, T] the unseen mass and cap [R, T] the most any one unseen token can hold (the smallest top-k
    probability). p_t(x) sums every spelling of x, and any spelling may be unseen, so every item can gain:
    x_i in [0, min(tail, n_i cap)] with sum x_i <= tail, where n_i is the number of its spellings that can be
    unseen: `spellings` for a missing item, one fewer for an item the top-k shows (spellings=1 is the old
    one-spelling model: only missing items gain). Maxima in closed form or over a small grid (see _max_tv);
    minima are linear programs after the Charnes-Cooper change of variables (solved exactly with scipy's
    HiGHS). Steps with no unseen mass get the point value twice; steps with no point value (no visible mass on
    the items) stay NaN, so the interval brackets the point.
    """
    probs = np.asarray(probs, dtype=float)
    missing = np.asarray(missing, dtype=bool)
    tail = np.nan_to_num(np.asarray(tail, dtype=float))
    cap = np.nan_to_num(np.asarray(cap, dtype=float))
    p_task = np.asarray(p_task, dtype=float)
    ptok = p_token(probs)
    tv_point = tv(ptok, p_task)
    e_point = np.where(np.isnan(ptok).any(axis=-1), np.nan, np.nanmax(np.where(np.isnan(ptok), -1.0, ptok), axis=-1))
    out = [tv_point.copy(), tv_point.copy(), e_point.copy(), e_point.copy()]
    u_missing = np.minimum(tail, spellings * cap)
    u_visible = np.minimum(tail, (spellings - 1) * cap)
    open_steps = np.argwhere((tail > 0) & (u_missing > 0) & ~np.isnan(tv_point))
    for r, t in open_steps:
        u = np.where(missing[r, t], u_missing[r, t], u_visible[r, t])
        lo_tv, hi_tv, lo_e, hi_e = _step_bounds(probs[r, t], missing[r, t], float(tail[r, t]), u, p_task)
        out[0][r, t], out[1][r, t], out[2][r, t], out[3][r, t] = lo_tv, hi_tv, lo_e, hi_e
    return out[0], out[1], out[2], out[3]


def _max_tv(q: np.ndarray, classes: np.ndarray, tail: float, u: np.ndarray, p_task: np.ndarray) -> float:
    """max TV(normalised q + x, P) over x_i in [0, u_i], sum x <= tail; u takes one value per class (0/1).

    TV = max over item sets A of p(A) - P(A). For a fixed A the best x puts g = min(tail, sum of u over A) on A
    and nothing elsewhere ((q_A + g) / (Q + g) grows with g), so the value is sum over A of (q_i / (Q + g) - P_i)
    plus g / (Q + g). g depends only on how many items of each class A holds; for given counts the best A takes
    the items with the highest q_i / (Q + g) - P_i of each class. Every pair of counts is tried (vectorised).
    """
    total = q.sum()
    groups = [np.flatnonzero(classes == c) for c in (0, 1)]
    counts = [np.arange(len(g) + 1) for g in groups]
    unit = [float(u[g[0]]) if len(g) else 0.0 for g in groups]
    a, b = np.meshgrid(counts[0], counts[1], indexing="ij")
    gain = np.minimum(tail, a * unit[0] + b * unit[1])
    denom = total + gain
    value = gain / denom
    for idx, n in zip(groups, (a, b)):
        if not len(idx):
            continue
        score = q[idx][None, None, :] / denom[..., None] - p_task[idx][None, None, :]
        best = np.cumsum(-np.sort(-score, axis=-1), axis=-1)
        best = np.concatenate([np.zeros(best.shape[:-1] + (1,)), best], axis=-1)
        value = value + np.take_along_axis(best, n[..., None], axis=-1)[..., 0]
    return float(value.max())


def _step_bounds(q: np.ndarray, miss: np.ndarray, tail: float, u: np.ndarray, p_task: np.ndarray):
    from scipy.optimize import linprog

    k = len(q)
    total = q.sum()
    if total <= 0:
        return np.nan, np.nan, np.nan, np.nan
    hi_e = float(np.max((q + u) / (total + u)))  # all the gain on one item: (q_i + g) / (Q + g) grows with g
    hi_tv = _max_tv(q, miss.astype(int), tail, u, p_task)
    # Minima: variables z = [t, y (k), w (k)], p_i = q_i t + y_i, with t = 1 / (Q + sum x) and y = x t.
    n = 1 + 2 * k
    a_eq = np.zeros((1, n))
    a_eq[0, 0] = total
    a_eq[0, 1:1 + k] = 1.0
    base_ub = np.zeros((k + 1, n))
    base_ub[np.arange(k), 1 + np.arange(k)] = 1.0  # y_i <= u_i t
    base_ub[np.arange(k), 0] = -u
    base_ub[k, 1:1 + k], base_ub[k, 0] = 1.0, -tail  # sum y <= tail t
    base_b = np.zeros(k + 1)
    p_rows = np.zeros((k, n))
    p_rows[:, 0] = q
    p_rows[np.arange(k), 1 + np.arange(k)] = 1.0
    w = np.zeros((k, n))
    w[np.arange(k), 1 + k + np.arange(k)] = -1.0
    bounds = [(0, None)] * (1 + k) + [(None, None)] * k
    c = np.zeros(n)
    c[1 + k:] = 0.5  # TV: w_i >= |p_i - P_i|
    res = linprog(c, A_ub=np.vstack([base_ub, p_rows + w, -p_rows + w]),
                  b_ub=np.concatenate([base_b, p_task, -p_task]), A_eq=a_eq, b_eq=[1.0], bounds=bounds,
                  method="highs")
    lo_tv = float(res.fun) if res.status == 0 else np.nan
    shared = np.zeros((k, n))
    shared[:, 1 + k] = -1.0  # e: one shared variable w_0 >= p_i (the max)
    c = np.zeros(n)
    c[1 + k] = 1.0
    res = linprog(c, A_ub=np.vstack([base_ub, p_rows + shared]), b_ub=np.concatenate([base_b, np.zeros(k)]),
                  A_eq=a_eq, b_eq=[1.0], bounds=bounds, method="highs")
    lo_e = float(res.fun) if res.status == 0 else np.nan
    return min(lo_tv, hi_tv), hi_tv, min(lo_e, hi_e), hi_e
