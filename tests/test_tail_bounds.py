"""ATVD and e-score intervals over where an unseen top-k tail could lie."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from deval.core import metrics
from deval.core.protocol import Step
from deval.backends.logprobs import Alt, Token
from deval.backends.positions import item_view
from deval.core.summary import summarise_task
from deval.core.tasks import TaskCatalog


def gain_caps(miss, tail, cap, spellings):
    """The sound feasible set: every item gains x_i in [0, min(tail, n_i cap)], n_i its spellings that can be
    unseen (all of them for a missing item, one fewer for an item the top-k shows), sum x_i <= tail."""
    return np.minimum(tail, np.where(miss, spellings, spellings - 1) * cap)


def brute(q, u, tail, p_task, rng, n=20000):
    """TV and e over random feasible completions: uniform in the box (kept when within the tail) and sparse
    Dirichlet splits of up to the whole tail, clipped to the box (corners of the polytope)."""
    k = len(q)
    box = rng.uniform(0, 1, size=(n, k)) * u
    box = box[box.sum(axis=1) <= tail]
    split = rng.dirichlet(np.full(k, 0.2), size=n) * tail * np.where(rng.random((n, 1)) < 0.5, 1.0,
                                                                       rng.uniform(0, 1, (n, 1)))
    x = np.vstack([box, np.minimum(split, u), np.zeros((1, k))])
    assert (x <= u + 1e-12).all() and (x.sum(axis=1) <= tail + 1e-12).all()
    v = q[None] + x
    p = v / v.sum(axis=1, keepdims=True)
    return metrics.tv(p, p_task), p.max(axis=1)


def bounds(q, miss, tail, cap, p_task, **kw):
    out = metrics.tail_bounds(np.asarray(q, float)[None, None], np.asarray(miss, bool)[None, None],
                              np.array([[tail]]), np.array([[cap]]), np.asarray(p_task, float), **kw)
    return tuple(float(a[0, 0]) for a in out)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 7), st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 3, metrics.SPELLINGS_PER_ITEM]))
def test_bounds_contain_every_feasible_completion(k, seed, spellings):
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(k)) * rng.uniform(0.3, 0.95)
    miss = rng.random(k) < 0.5
    q[miss] = 0.0
    if q.sum() == 0:
        q[0], miss[0] = 0.2, False
    tail = 1.0 - q.sum()
    cap = min(tail, rng.uniform(0.005, 0.5))
    p_task = rng.dirichlet(np.ones(k))
    lo_tv, hi_tv, lo_e, hi_e = bounds(q, miss, tail, cap, p_task, spellings=spellings)
    tvs, es = brute(q, gain_caps(miss, tail, cap, spellings), tail, p_task, rng)
    eps = 1e-9
    assert lo_tv - eps <= tvs.min() and tvs.max() <= hi_tv + eps
    assert lo_e - eps <= es.min() and es.max() <= hi_e + eps
    point_tv = metrics.tv(metrics.p_token(q), p_task)
    assert lo_tv - eps <= point_tv <= hi_tv + eps


def test_bounds_reach_the_extremes_known_by_hand():
    # visible 1: 0.5, 2: 0.3; items 3 and 4 missing; tail 0.2, each unseen token at most 0.05
    q, miss, p_task = [0.5, 0.3, 0.0, 0.0], [False, False, True, True], [0.1, 0.7, 0.1, 0.1]
    # one spelling per item (the old model): only 3 and 4 gain, each at most 0.05
    lo_tv, hi_tv, lo_e, hi_e = bounds(q, miss, 0.2, 0.05, p_task, spellings=1)
    assert hi_tv == pytest.approx(0.525)  # nothing lands on 3 and 4: P_token = (5/8, 3/8, 0, 0)
    assert hi_e == pytest.approx(0.625)
    assert lo_e == pytest.approx(0.5 / 0.9)  # both missing items at the cap: 0.5 / 0.9
    assert lo_tv == pytest.approx(0.41 / 0.9)
    # two spellings: 3 and 4 gain up to 0.1 each, 1 and 2 (one spelling seen) up to 0.05 each
    lo_tv, hi_tv, lo_e, hi_e = bounds(q, miss, 0.2, 0.05, p_task, spellings=2)
    assert hi_e == pytest.approx(0.55 / 0.85)  # " 1" unseen at the cap
    assert hi_tv == pytest.approx(0.55 / 0.85 - 0.1)  # the same: TV = p(1) - P(1), 1 the only item above P
    assert lo_e == pytest.approx(0.5)  # the whole tail spread over 2, 3, 4: 0.5 / 1.0
    assert lo_tv == pytest.approx(0.4)  # 2 gains 0.05, 3 and 4 0.075 each: (0.5, 0.35, 0.075, 0.075)
    # the default (8 spellings, the cap does not bind here): any one item can take the whole tail
    lo_tv, hi_tv, lo_e, hi_e = bounds(q, miss, 0.2, 0.05, p_task)
    assert hi_e == pytest.approx(0.7) and hi_tv == pytest.approx(0.6)
    assert lo_e == pytest.approx(0.5) and lo_tv == pytest.approx(0.4)


def test_a_step_with_no_unseen_mass_gives_the_point_value_and_one_with_a_tail_an_interval():
    q, p_task = np.array([0.2, 0.5, 0.1, 0.2]), [0.1, 0.7, 0.1, 0.1]
    lo_tv, hi_tv, lo_e, hi_e = bounds(q, np.zeros(4, bool), 0.0, 0.1, p_task)
    assert lo_tv == hi_tv == pytest.approx(0.2) and lo_e == hi_e == pytest.approx(0.5)
    # nothing missing, but 0.1 unseen: any item may have a second spelling in it
    q = q * 0.9
    lo_tv, hi_tv, lo_e, hi_e = bounds(q, np.zeros(4, bool), 0.1, 0.01, p_task)
    assert lo_tv < 0.2 < hi_tv and lo_e < 0.5 < hi_e


def full_step(full: dict, k: int, items: tuple, p_task):
    """A step seen through the top-k of a full distribution {token text: p}, and the true TV_t and e_t."""
    ranked = sorted(full.items(), key=lambda kv: -kv[1])
    top = ranked[:k]
    token = Token("t:" + top[0][0], top[0][0].encode(), math.log(top[0][1]),
                  tuple(Alt("t:" + t, t.encode(), math.log(p)) for t, p in top))
    view = item_view(token, items, ",")
    truth = np.array([sum(p for t, p in full.items() if t.strip(" ,") == x) for x in items])
    ptok = truth / truth.sum()
    return view, float(metrics.tv(ptok, np.asarray(p_task))), float(ptok.max())


@pytest.mark.parametrize("full, k, p_task", [
    # "1" is in the top-2, its second spelling " 1" is not: the item gains though nothing is missing
    ({"1": 0.5, "2": 0.3, " 1": 0.15, "x": 0.05}, 2, [0.5, 0.5, 0.0]),
    # "3" is missing and has two unseen spellings, each within the cap: it gains more than one cap
    ({"1": 0.5, "2": 0.3, "x": 0.05, "3": 0.05, " 3": 0.05, "y": 0.05}, 3, [0.1, 0.1, 0.8]),
])
def test_bounds_bracket_the_truth_when_an_item_has_an_unseen_spelling(full, k, p_task):
    items = ("1", "2", "3")
    view, tv_true, e_true = full_step(full, k, items, p_task)
    lo_tv, hi_tv, lo_e, hi_e = bounds(view.probs, [i in view.missing for i in range(3)], view.tail, view.tail_cap,
                                      p_task)
    eps = 1e-9
    assert lo_tv - eps <= tv_true <= hi_tv + eps
    assert lo_e - eps <= e_true <= hi_e + eps


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
