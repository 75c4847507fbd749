"""ATVD and e-score intervals over where an unseen top-k tail could lie."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from deval import metrics
from deval.backend import Step
from deval.summary import summarise_task
from deval.tasks import TaskCatalog


def brute(q, miss, tail, u, p_task, rng, n=20000):
    idx = np.flatnonzero(miss)
    x = rng.uniform(0, u, size=(n, len(idx)))
    x = x[x.sum(axis=1) <= tail]
    v = np.repeat(q[None], len(x), axis=0)
    v[:, idx] += x
    p = v / v.sum(axis=1, keepdims=True)
    return metrics.tv(p, p_task), p.max(axis=1)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_bounds_contain_every_feasible_completion(k, seed):
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(k)) * rng.uniform(0.3, 0.95)
    miss = rng.random(k) < 0.5
    q[miss] = 0.0
    if q.sum() == 0:
        q[0], miss[0] = 0.2, False
    tail = 1.0 - q.sum()
    cap = min(tail, rng.uniform(0.01, 0.5))
    p_task = rng.dirichlet(np.ones(k))
    lo_tv, hi_tv, lo_e, hi_e = (a[0, 0] for a in metrics.tail_bounds(q[None, None], miss[None, None],
                                                                       np.array([[tail]]), np.array([[cap]]), p_task))
    tvs, es = brute(q, miss, tail, cap, p_task, rng)
    eps = 1e-9
    assert lo_tv - eps <= tvs.min() and tvs.max() <= hi_tv + eps
    assert lo_e - eps <= es.min() and es.max() <= hi_e + eps
    point_tv = metrics.tv(metrics.p_token(q), p_task)
    assert lo_tv - eps <= point_tv <= hi_tv + eps


def test_bounds_reach_the_extremes_known_by_hand():
    # visible 1: 0.5, 2: 0.3; items 3 and 4 missing; tail 0.2, each unseen token at most 0.05
    q = np.array([[[0.5, 0.3, 0.0, 0.0]]])
    miss = np.array([[[False, False, True, True]]])
    out = metrics.tail_bounds(q, miss, np.array([[0.2]]), np.array([[0.05]]), np.array([0.1, 0.7, 0.1, 0.1]))
    lo_tv, hi_tv, lo_e, hi_e = (float(a[0, 0]) for a in out)
    assert hi_tv == pytest.approx(0.525)  # nothing lands on 3 and 4: P_token = (5/8, 3/8, 0, 0)
    assert hi_e == pytest.approx(0.625)
    assert lo_e == pytest.approx(0.5 / 0.9)  # both missing items at the cap: 0.5 / 0.9
    assert lo_tv == pytest.approx(0.41 / 0.9)


def test_no_missing_item_gives_the_point_value():
    q = np.array([[[0.2, 0.5, 0.1, 0.1]]])
    out = metrics.tail_bounds(q, np.zeros((1, 1, 4), bool), np.array([[0.1]]), np.array([[0.01]]),
                              np.array([0.1, 0.7, 0.1, 0.1]))
    assert out[0][0, 0] == out[1][0, 0] and out[2][0, 0] == out[3][0, 0]


def test_summary_reports_bounds_that_bracket_the_point_values():
    task = TaskCatalog.load().get("extreme")
    rng = np.random.default_rng(0)
    steps = []
    for r in range(3):
        for t in range(5):
            p = rng.dirichlet(np.ones(4)) * 0.8
            missing = (3,) if t % 2 else ()
            if missing:
                p[3] = 0.0
            steps.append(Step(task="extreme", run=r, step=t, probs=tuple(p), sampled=int(np.argmax(p)), text="",
                              final=t == 4, tail=1 - p.sum(), missing=missing, tail_cap=0.05))
    s = summarise_task(task, steps, seed=0)
    lo, hi = s["atvd_bounds"]
    assert lo < s["atvd"]["mean"] <= hi
    lo, hi = s["e_score_bounds"]
    assert lo <= s["e_score"]["mean"] <= hi and lo < hi
    assert s["missing_rate"] == pytest.approx(2 / 5)
    exact = [Step(**{**st.__dict__, "missing": (), "tail": 0.0, "tail_cap": None}) for st in steps]
    s = summarise_task(task, exact, seed=0)
    assert s["atvd_bounds"] == [pytest.approx(s["atvd"]["mean"])] * 2


def test_step_record_round_trip_keeps_tail_cap_and_reads_old_records():
    st = Step(task="t", run=0, step=0, probs=(0.5,), sampled=0, text="1", tail=0.2, missing=(), tail_cap=0.01)
    assert Step.from_record(st.to_record()) == st
    old = {k: v for k, v in st.to_record().items() if k != "tail_cap"}
    assert Step.from_record(old).tail_cap is None
