"""The first-slot P_token view: the pruned trie walk gives the brute-force probability and rank of the held-out
title; with too small a budget its rank interval still holds the true rank."""

import itertools

import numpy as np
import pytest

from deval.analyses.recommend.ptoken import TitleTrie, first_slot
from deval.core.exact import CachedModel
from deval.core.sampling import Filters, sampling_logprobs
from exact_fakes import FakeExact

TITLES = {i: "".join(t) for i, t in enumerate(
    [p for n in (1, 2, 3) for p in itertools.product("aeiou", repeat=n)][::3] + [("x", "7"), ("o", "u", "1", "3")])}
CONTEXT = (18, 12, 2)  # Q 1 .


def brute_force(model, title: str, temperature: float, filters: Filters) -> float:
    path = model.tokenize(" " + title)
    return float(sum(sampling_logprobs(model.next_logprobs(CONTEXT + tuple(path[:i])), temperature, filters)[tok]
                     for i, tok in enumerate(path)))


@pytest.mark.parametrize("filters", [Filters(), Filters(top_k=6)])
def test_rank_and_probability_match_brute_force(filters):
    model = FakeExact(favourite=b"e", sharpness=1.0)
    trie = TitleTrie.build(model, TITLES)
    temps = [0.7, 1.0, 1.5]
    truth = {t: {m: brute_force(model, s, t, filters) for m, s in TITLES.items()} for t in temps}
    for held in list(TITLES)[::4]:
        results = first_slot(CachedModel(model), CONTEXT, trie, held, temps, filters, budget=10**6)
        for r in results:
            lp = truth[r["temperature"]]
            expected_rank = 1 + sum(v > lp[held] for m, v in lp.items() if m != held)
            assert r["rank"] == r["rank_hi"] == expected_rank
            if np.isfinite(lp[held]):
                assert r["logprob"] == pytest.approx(lp[held], abs=1e-9)
            else:
                assert r["logprob"] is None


def test_pruning_saves_passes_and_a_small_budget_gives_an_interval_holding_the_rank():
    model = FakeExact(favourite=b"e", sharpness=1.0)
    trie = TitleTrie.build(model, TITLES)
    full = first_slot(CachedModel(model), CONTEXT, trie, 0, [1.0], Filters(), budget=10**6)[0]
    assert full["passes"] < len(trie.children)  # prefixes no likelier than the held-out title are skipped
    for held in TITLES:
        exact = first_slot(CachedModel(model), CONTEXT, trie, held, [1.0], Filters(), budget=10**6)[0]
        short = first_slot(CachedModel(model), CONTEXT, trie, held, [1.0], Filters(), budget=3)[0]
        assert short["rank"] <= exact["rank"] <= short["rank_hi"] <= len(TITLES)
        assert short["logprob"] == pytest.approx(exact["logprob"])
