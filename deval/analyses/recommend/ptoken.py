"""The P_token view of recommendation on exact backends: at the answer's first slot, the probability of the
held-out title (chain rule over its tokens) and its rank among the catalogue's titles.

Our reconstruction (docs/recommend.md): the answer is taken to open with FIRST_SLOT ("1."), then the title in
display form with a leading space (" The Matrix (1999)"), one tokenisation (the tokenizer's own); the title's
probability is the product of its tokens' sampling probabilities (temperature and filters applied) with no end
marker required. The rank counts catalogue titles with a strictly higher probability, found by a walk down the
catalogue's token trie, likeliest prefix first, that skips every prefix already no likelier than the held-out
title (such a prefix can hold no likelier title). When the walk runs out of its forward-pass budget, the rank is an interval.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from deval.core.exact import CachedModel, ExactModel
from deval.core.sampling import Filters, sampling_logprobs

FIRST_SLOT = "1."
BUDGET = 300  # forward passes one user's walk may spend (all temperatures share them)


@dataclass
class TitleTrie:
    """Catalogue titles as token paths: node -> child tokens, node -> the movies whose title ends there."""

    paths: dict[int, tuple[int, ...]]
    children: dict[tuple[int, ...], set[int]]
    ends: dict[tuple[int, ...], list[int]]

    @classmethod
    def build(cls, model: ExactModel, titles: dict[int, str]) -> "TitleTrie":
        paths = {m: tuple(model.tokenize(" " + t)) for m, t in titles.items()}
        children: dict[tuple[int, ...], set[int]] = {}
        ends: dict[tuple[int, ...], list[int]] = {}
        for m, path in paths.items():
            for i in range(len(path)):
                children.setdefault(path[:i], set()).add(path[i])
            ends.setdefault(path, []).append(m)
        return cls(paths, children, ends)


def _rows(cached: CachedModel, context: tuple[int, ...], node: tuple[int, ...], temperatures: Sequence[float],
          filters: Filters) -> np.ndarray:
    row = cached.next_logprobs(context + node)
    return np.stack([sampling_logprobs(row, t, filters) for t in temperatures])


def first_slot(cached: CachedModel, context: tuple[int, ...], trie: TitleTrie, held_out: int,
               temperatures: Sequence[float], filters: Filters, budget: int = BUDGET) -> list[dict]:
    """Per temperature: the held-out title's log-probability at the first slot and its rank interval [rank,
    rank_hi] among the catalogue's titles (equal when the walk finished within the budget)."""
    temps = list(temperatures)
    before = cached.calls
    path = trie.paths[held_out]
    target = np.zeros(len(temps))
    for i, tok in enumerate(path):
        target += _rows(cached, context, path[:i], temps, filters)[:, tok]
    above = np.zeros(len(temps), dtype=int)  # titles certainly likelier
    unsure = np.zeros(len(temps), dtype=int)  # titles under prefixes the budget left unexplored
    memo: dict[tuple[int, ...], int] = {}
    heap = [(-0.0, 0, (), np.zeros(len(temps)))]  # likeliest prefix first: the budget goes where ranks are decided
    pushed = 1
    while heap:
        _, _, node, lp = heapq.heappop(heap)
        live = lp > target
        if not live.any():
            continue
        if cached.calls - before >= budget:
            inside = path[:len(node)] == node and len(path) > len(node)  # the held-out title itself
            unsure += live * (_titles_under(trie, node, memo) - inside)
            continue
        rows = _rows(cached, context, node, temps, filters)
        for tok in trie.children.get(node, ()):
            child = node + (tok,)
            child_lp = lp + rows[:, tok]
            for m in trie.ends.get(child, ()):
                if m != held_out:
                    above += child_lp > target
            if child in trie.children:
                heapq.heappush(heap, (-float(child_lp.max()), pushed, child, child_lp))
                pushed += 1
    passes = cached.calls - before
    return [{"temperature": t, "logprob": float(target[j]) if np.isfinite(target[j]) else None,
             "rank": int(above[j]) + 1, "rank_hi": int(above[j] + unsure[j]) + 1, "passes": passes}
            for j, t in enumerate(temps)]


def _titles_under(trie: TitleTrie, node: tuple[int, ...], memo: dict) -> int:
    """Catalogue titles whose path goes through `node` (ending below it, not at it)."""
    if node in memo:
        return memo[node]
    count = 0
    for tok in trie.children.get(node, ()):
        child = node + (tok,)
        count += len(trie.ends.get(child, ())) + _titles_under(trie, child, memo)
    memo[node] = count
    return count


def open_context(model: ExactModel, prompt: str) -> tuple[int, ...]:
    """The prompt's tokens (chat template as the backend applies it) and the first slot's opening."""
    return tuple(model.prompt_tokens(prompt)) + tuple(model.tokenize(FIRST_SLOT))
