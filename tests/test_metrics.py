"""Metric functions against the exact reference values and hand-worked cases."""

import numpy as np
import pytest

from deval.core import metrics

EXTREME = np.array([0.1, 0.7, 0.1, 0.1])
FLAT = np.array([0.1, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1])


def onehot(k, i):
    v = np.zeros(k)
    v[i] = 1.0
    return v


@pytest.mark.parametrize("p_task, uniform_tv, mode_tv, elsewhere_tv, expected_atvd", [
    (EXTREME, 0.45, 0.30, 0.90, 0.48),
    (FLAT, 0.0889, 0.80, 0.90, 0.88),
])
def test_reference_table(p_task, uniform_tv, mode_tv, elsewhere_tv, expected_atvd):
    k = len(p_task)
    mode = int(np.argmax(p_task))
    other = (mode + 1) % k
    assert metrics.tv(np.full(k, 1 / k), p_task) == pytest.approx(uniform_tv, abs=5e-5)
    assert metrics.tv(onehot(k, mode), p_task) == pytest.approx(mode_tv)
    assert metrics.tv(onehot(k, other), p_task) == pytest.approx(elsewhere_tv)
    # E[ATVD] when every step is one-hot on an item drawn from P_task: exact expectation ...
    exact = sum(p_task[i] * metrics.tv(onehot(k, i), p_task) for i in range(k))
    assert exact == pytest.approx(expected_atvd)
    # ... and what the step metrics give on a long simulated run
    rng = np.random.default_rng(1)
    draws = rng.choice(k, size=(20, 2000), p=p_task)
    ptok = np.eye(k)[draws]
    assert metrics.run_means(metrics.tv(ptok, p_task)).mean() == pytest.approx(expected_atvd, abs=0.01)


@pytest.mark.parametrize("p_task", [EXTREME, FLAT])
def test_calibrated_model_scores_zero_atvd_and_max_p_escore(p_task):
    ptok = np.broadcast_to(p_task, (3, 5, len(p_task)))
    assert np.allclose(metrics.run_means(metrics.tv(ptok, p_task)), 0.0)
    assert np.allclose(ptok.max(axis=-1), p_task.max())
    assert metrics.extremity(p_task.max(), p_task) == pytest.approx(0.0)
    assert metrics.extremity(1.0, p_task) == pytest.approx(1.0)


def test_p_token_renormalises_and_reports_on_set_mass():
    probs = np.array([[[0.2, 0.2, 0.1], [0.0, 0.0, 0.0]]])
    assert metrics.on_set_mass(probs)[0].tolist() == pytest.approx([0.5, 0.0])
    ptok = metrics.p_token(probs)
    assert ptok[0, 0].tolist() == pytest.approx([0.4, 0.4, 0.2])
    assert np.isnan(ptok[0, 1]).all()  # no mass on the set: no P_token, not a made-up one


def test_volatility_and_entropy_by_hand():
    ptok = np.array([[[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]])
    assert metrics.volatility(ptok)[0].tolist() == pytest.approx([1.0, 0.5])
    assert metrics.entropy(ptok)[0].tolist() == pytest.approx([0.0, 0.0, np.log(2)])


def test_counts_result_tvd_and_invalid_rate():
    sampled = np.array([[0, 0, 1, metrics.INVALID], [1, 1, metrics.PAD, metrics.PAD]])
    c = metrics.counts(sampled, 2)
    assert c.tolist() == [[2, 1], [0, 2]]
    p_task = np.array([0.5, 0.5])
    assert metrics.result_tvd(c, p_task).tolist() == pytest.approx([1 / 6, 0.5])
    assert metrics.invalid_rate(sampled) == pytest.approx(1 / 6)


def test_quota_r_detects_compensation_and_its_absence():
    rng = np.random.default_rng(0)
    p_task = np.array([0.5, 0.5])
    t = 200
    # compensating model: leans toward whatever is behind quota
    sampled = np.zeros((1, t), dtype=int)
    ptok = np.zeros((1, t, 2))
    c = np.zeros(2)
    for i in range(t):
        residual = p_task - (c / i if i else p_task)
        p = np.clip(p_task + 2.0 * residual, 0.01, 0.99)
        p = p / p.sum()
        ptok[0, i] = p
        sampled[0, i] = rng.choice(2, p=p)
        c[sampled[0, i]] += 1
    assert metrics.quota_r(ptok, sampled, p_task)[0] > 0.9
    # memoryless model: deviations unrelated to the quota
    noise = rng.dirichlet([5, 5], size=(1, t))
    drawn = np.array([[rng.choice(2, p=p) for p in noise[0]]])
    assert abs(metrics.quota_r(noise, drawn, p_task)[0]) < 0.2


def test_chi2_p_value():
    p_task = np.array([0.5, 0.5])
    assert metrics.chi2_p(np.array([50, 50]), p_task) == pytest.approx(1.0)
    assert metrics.chi2_p(np.array([90, 10]), p_task) < 1e-10
    assert metrics.chi2_p(np.array([1, 1, 1]), np.array([0.5, 0.5, 0.0])) == 0.0  # count on an impossible item
    assert np.isnan(metrics.chi2_p(np.array([0, 0]), p_task))


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    values = np.array([0.1, 0.2, 0.3, 0.4, np.nan])
    a = metrics.bootstrap_ci(values, np.random.default_rng(5))
    b = metrics.bootstrap_ci(values, np.random.default_rng(5))
    assert a == b
    assert a[0] <= 0.25 <= a[1]
    assert 0.1 <= a[0] and a[1] <= 0.4
    assert metrics.bootstrap_ci(np.array([0.3]), np.random.default_rng(0)) == (0.3, 0.3)
