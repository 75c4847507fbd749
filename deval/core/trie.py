"""Items as token tries, and item probabilities by the chain rule down a trie (shared by the local backend
and the sweep's exact re-tempering, so measured and derived numbers follow one rule)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

Node = tuple[int, ...]


@dataclass
class ItemTrie:
    """Token sequences that spell each item (with and without a leading space, and any single token whose
    text is the item), as a trie keyed by token-id tuples. node -> item index where a spelling ends there."""

    children: dict[Node, set[int]] = field(default_factory=dict)
    ends: dict[Node, int] = field(default_factory=dict)

    def add(self, tokens: Sequence[int], item: int) -> None:
        path: Node = ()
        for tok in tokens:
            self.children.setdefault(path, set()).add(tok)
            path = path + (tok,)
        self.ends.setdefault(path, item)

    def interior(self) -> list[Node]:
        """Non-root nodes with children: their next-token distributions are needed for item probabilities."""
        return [node for node in self.children if node]

    def lookahead(self) -> Node:
        """The longest chain of interior nodes from the root, evaluated in the same batch as the step's tokens."""
        best: Node = ()
        for node in self.interior():
            if len(node) > len(best) and all(node[:i] in self.children for i in range(1, len(node))):
                best = node
        return best


def chain_rule(children: Mapping[Node, Sequence[int]], ends: Mapping[Node, int],
               prob: Callable[[Node, int], float], n_items: int) -> np.ndarray:
    """p(item) summed over every spelling path; prob(node, tok) is the next-token probability at a node.

    An item that is also a prefix of another item ('1' and '10') keeps only the mass that does not go on
    into the longer item."""
    probs = np.zeros(n_items)

    def walk(node: Node, mass: float) -> None:
        going_on = 0.0
        for tok in children.get(node, ()):
            q = prob(node, tok)
            going_on += q
            if q > 0:
                walk(node + (tok,), mass * q)
        if node in ends:
            probs[ends[node]] += mass * (1.0 - going_on if node in children else 1.0)

    walk((), 1.0)
    return probs


def item_logprobs(trie: ItemTrie, row: np.ndarray, n_items: int) -> tuple[tuple[float, ...], ...] | None:
    """Per item, the T=1 log-probabilities of its one-token spellings (for deval.analyses.sweep); None if any is longer."""
    out: list[list[float]] = [[] for _ in range(n_items)]
    for node, item in trie.ends.items():
        if len(node) != 1 or node in trie.children:
            return None
        out[item].append(float(row[node[0]]))
    return tuple(tuple(x) for x in out)


def end_paths(trie: ItemTrie, dists: dict) -> list[tuple[tuple[int, ...], int, float]]:
    """Every token path that spells an item, with its item and probability (the chain rule's terms)."""
    out = []

    def walk(node: tuple[int, ...], mass: float) -> None:
        going_on = 0.0
        for tok in sorted(trie.children.get(node, ())):
            q = float(np.exp(dists[node][tok]))
            going_on += q
            if q > 0:
                walk(node + (tok,), mass * q)
        if node in trie.ends:
            out.append((node, trie.ends[node], mass * (1.0 - going_on if node in trie.children else 1.0)))

    walk((), 1.0)
    return out


def pick_path(paths: list[tuple[tuple[int, ...], int, float]], rng: np.random.Generator) -> tuple[tuple, int | None]:
    """A constrained draw: one uniform over the paths in item order, each item's spellings most likely first, so that
    where the draw lands depends on the item probabilities, not on how the tokenizer numbers the spellings (and a
    top-k that misses a rare spelling, over HTTP, moves no draw)."""
    paths = sorted((p for p in paths if p[2] > 0), key=lambda p: (p[1], -p[2], p[0]))
    masses = np.array([m for _, _, m in paths])
    if not paths:
        return (), None
    j = int(np.searchsorted(np.cumsum(masses), rng.random() * masses.sum(), side="right").clip(0, len(paths) - 1))
    return paths[j][0], paths[j][1]
