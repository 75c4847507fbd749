"""Property tests for the exact identities of temperature and decoding filters (metrics.md)."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.special import logsumexp

from deval.core.sampling import Filters
from deval.core.sampling import draw, kept_mask, sampling_logprobs, with_temperature

logits = arrays(np.float64, st.integers(2, 12), elements=st.floats(-12, 12, allow_nan=False))
temps = st.floats(0.2, 5.0)
FAST = settings(max_examples=150, deadline=None)


def normalise(s):
    return s - logsumexp(s)


def entropy(logp):
    p = np.exp(logp)
    return float(-np.sum(np.where(p > 0, p * np.where(p > 0, logp, 0.0), 0.0)))


@FAST
@given(logits, temps)
def test_temperature_identity(s, t):
    lp = with_temperature(normalise(s), t)
    i, j = 0, len(s) - 1
    assert t * (lp[i] - lp[j]) == pytest.approx(s[i] - s[j], abs=1e-8)
    assert np.exp(lp).sum() == pytest.approx(1.0)


@FAST
@given(logits, temps, st.data())
def test_temperature_on_known_subset_is_exact(s, t, data):
    """softmax(log p_S / T) over a subset S equals P_T restricted to S and renormalised."""
    logp = normalise(s)
    subset = data.draw(st.lists(st.integers(0, len(s) - 1), min_size=1, unique=True))
    full = with_temperature(logp, t)
    np.testing.assert_allclose(with_temperature(logp[subset], t), normalise(full[subset]), atol=1e-10)


@FAST
@given(logits, temps, temps)
def test_ranks_kept_max_prob_down_entropy_up(s, t1, t2):
    lo, hi = sorted((t1, t2))
    a, b = with_temperature(normalise(s), lo), with_temperature(normalise(s), hi)
    order = np.argsort(-s, kind="stable")
    assert np.all(np.diff(a[order]) <= 1e-12) and np.all(np.diff(b[order]) <= 1e-12)
    assert b.max() <= a.max() + 1e-12
    assert entropy(b) >= entropy(a) - 1e-9


filter_sets = st.builds(
    Filters,
    top_k=st.none() | st.integers(1, 12),
    top_p=st.none() | st.floats(0.05, 0.99),
    min_p=st.none() | st.floats(0.0, 0.9),
)


@FAST
@given(logits, temps, filter_sets, st.sampled_from(["filters-first", "temperature-first"]))
def test_truncation_renormalises_and_keeps_ratios(s, t, f, order):
    f = Filters(f.top_k, f.top_p, f.min_p, order)
    logp = normalise(s)
    q = sampling_logprobs(logp, t, f)
    kept = np.isfinite(q)
    assert kept.any()
    assert np.exp(q).sum() == pytest.approx(1.0)
    tempered = with_temperature(logp, t)
    i = np.flatnonzero(kept)
    np.testing.assert_allclose(q[i] - q[i[0]], tempered[i] - tempered[i[0]], atol=1e-9)
    # the kept set is an upper set of the ranking: nothing kept is less likely than something dropped
    if (~kept).any():
        assert logp[kept].min() >= logp[~kept].max()


@FAST
@given(logits, temps, st.integers(1, 12))
def test_top_k_commutes_with_temperature(s, t, k):
    logp = normalise(s)
    a = sampling_logprobs(logp, t, Filters(top_k=k, order="filters-first"))
    b = sampling_logprobs(logp, t, Filters(top_k=k, order="temperature-first"))
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], atol=1e-10)


@FAST
@given(logits, temps, st.one_of(st.builds(Filters, top_p=st.floats(0.05, 0.99)),
                                st.builds(Filters, min_p=st.floats(0.01, 0.9))))
def test_order_matters_for_top_p_and_min_p_in_the_direction_it_should(s, t, f):
    """Temperature-first keeps a superset of filters-first when T > 1 and a subset when T < 1."""
    logp = normalise(s)
    first = np.isfinite(sampling_logprobs(logp, t, Filters(f.top_k, f.top_p, f.min_p, "filters-first")))
    after = np.isfinite(sampling_logprobs(logp, t, Filters(f.top_k, f.top_p, f.min_p, "temperature-first")))
    assume(np.min(np.diff(np.sort(logp))) > 1e-9)  # ties (also within rounding) make the cut arbitrary
    if t >= 1:
        assert np.all(after >= first)
    else:
        assert np.all(after <= first)


def test_top_p_and_min_p_do_not_commute_concrete():
    logp = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    for f in (Filters(top_p=0.8), Filters(min_p=0.2)):
        a = np.isfinite(sampling_logprobs(logp, 2.0, Filters(top_p=f.top_p, min_p=f.min_p, order="filters-first")))
        b = np.isfinite(sampling_logprobs(logp, 2.0, Filters(top_p=f.top_p, min_p=f.min_p, order="temperature-first")))
        assert a.sum() < b.sum()
    # top-p at 0.8 keeps {0.5, 0.3} at T=1; at T=2 the same set no longer reaches 0.8
    assert kept_mask(logp, Filters(top_p=0.8)).tolist() == [True, True, False, False]
    assert kept_mask(with_temperature(logp, 2.0), Filters(top_p=0.8)).tolist() == [True, True, True, False]


def test_filters_compose_top_k_then_top_p_then_min_p():
    logp = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    assert kept_mask(logp, Filters(top_k=3)).tolist() == [True, True, True, False]
    # top-p is computed on the top-k survivors renormalised: 0.4/0.9 = 0.44 < 0.5 <= 0.78
    assert kept_mask(logp, Filters(top_k=3, top_p=0.5)).tolist() == [True, True, False, False]
    assert kept_mask(logp, Filters(min_p=0.5)).tolist() == [True, True, True, False]
    assert kept_mask(logp, Filters(top_k=2, min_p=0.8)).tolist() == [True, False, False, False]


def test_top_p_keeps_the_smallest_set_reaching_p_and_ties_by_index():
    logp = np.log(np.array([0.25, 0.25, 0.25, 0.25]))
    assert kept_mask(logp, Filters(top_p=0.5)).tolist() == [True, True, False, False]
    assert kept_mask(logp, Filters(top_k=1)).tolist() == [True, False, False, False]
    assert kept_mask(logp, Filters(top_p=0.51)).tolist() == [True, True, True, False]


def test_filtered_tokens_are_never_drawn_and_frequencies_follow_p():
    rng = np.random.default_rng(1)
    logp = sampling_logprobs(np.log(np.array([0.5, 0.3, 0.15, 0.05])), 1.0, Filters(top_k=3))
    n = 20000
    counts = np.bincount([draw(logp, rng) for _ in range(n)], minlength=4)
    assert counts[3] == 0
    expected = np.exp(logp[:3]) * n
    chi2 = float(((counts[:3] - expected) ** 2 / expected).sum())
    assert chi2 < 13.8  # 2 degrees of freedom, p = 0.001


def test_a_draws_uniform_is_the_one_llama_cpps_dist_sampler_draws_with_the_seed():
    """std::uniform_real_distribution<double> over std::mt19937(seed), as libstdc++ makes it: the server given a
    draw's seed draws at the same point of the inverse CDF."""
    from deval.core.sampling import draw_at, draw_seed, seed_uniform

    # std::mt19937's first outputs at its default seed 5489 (the C++ standard's engine): the low word comes first
    assert seed_uniform(5489) == (3499211612 + 581869302 * 2.0**32) / 2.0**64
    assert seed_uniform(42) == 0.796542984287846  # printed by a g++ 12 build of the same expression
    rng = np.random.default_rng(0)
    seeds = [draw_seed(rng) for _ in range(2000)]
    assert all(0 <= s < 2**32 - 1 for s in seeds)  # 0xFFFFFFFF would be llama.cpp's "random seed"
    u = np.array([seed_uniform(s) for s in seeds])
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.02
    logp = np.log(np.array([0.2, 0.0, 0.5, 0.3]))  # id order: 0 below 0.2, 2 up to 0.7, 3 above
    assert [draw_at(logp, x) for x in (0.1, 0.3, 0.69, 0.71)] == [0, 2, 2, 3]
