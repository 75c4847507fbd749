"""Free draws made by the server itself on the completions route (llama-cpp-python's server; issue 11).

deval's draw (core.sampling.draw) is llama.cpp's `dist` sampler at the uniform std::mt19937 gives for a 32-bit
seed, and llama-cpp-python runs that sampler: given the draw's seed and neutral sampler settings, its one-token
completion is the token deval would draw from the whole distribution. A top-k row cannot always make that draw
itself (in token-id order the unseen mass lies between the visible ids), so the server's draw keeps a free walk on
the in-process trajectory where a row draw would leave it, and it is a small answer (one token) where a row is a
top-1000.

Checked once per backend, on the first row a draw is made at: seeds where the row decides the token-id order's
draw whatever the unseen mass does, and where likeliest first (an older llama.cpp sorts the row before drawing)
gives another token, both clear of a token boundary by MARGIN of the mass. A server that fails the check gets
deval's draws from the rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from deval.backends.http import Refused
from deval.backends.native import decided_draw
from deval.backends.vocab import Vocab
from deval.core.sampling import seed_uniform

if TYPE_CHECKING:  # pragma: no cover
    from deval.backends.http import Transport

CHECK_SEEDS = 4  # seeds the server's draw is checked on
MARGIN = 1e-3  # of the mass: the server's row may differ a little from the row asked (another decode)


def likeliest_first(seen: dict[int, float], u: float) -> int | None:
    """The token an inverse CDF walking the row likeliest first takes with uniform u, None where the visible
    tokens (the top of the row) do not reach u."""
    ids = np.fromiter(seen, dtype=np.int64, count=len(seen))
    values = np.fromiter(seen.values(), dtype=np.float64, count=len(seen))
    order = np.argsort(-values, kind="stable")
    j = int(np.searchsorted(np.cumsum(np.exp(values[order])), u, side="right"))
    return int(ids[order[j]]) if j < len(ids) else None


def check_seeds(seen: dict[int, float], n_vocab: int, count: int = CHECK_SEEDS,
                tries: int = 2000) -> list[tuple[int, int]]:
    """(seed, deval's token) where a visible row decides deval's draw and likeliest first takes another token,
    each unchanged by a shift of MARGIN in the uniform."""
    if not seen:
        return []
    ids = np.fromiter(seen, dtype=np.int64, count=len(seen))
    weights = np.exp(np.fromiter(seen.values(), dtype=np.float64, count=len(seen)))
    by_id, by_rank = np.argsort(ids, kind="stable"), np.argsort(-weights, kind="stable")
    seeds = np.arange(1, tries)
    us = np.array([seed_uniform(int(s)) for s in seeds])
    last = len(ids) - 1
    # a first pass over the visible mass alone: the seeds where the two orders may part (peaked rows have few)
    first = ids[by_id[np.minimum(np.searchsorted(np.cumsum(weights[by_id]), us, side="right"), last)]]
    second = ids[by_rank[np.minimum(np.searchsorted(np.cumsum(weights[by_rank]), us, side="right"), last)]]
    found = []
    for seed, u in zip(seeds[first != second].tolist(), us[first != second].tolist()):
        deval = {decided_draw(seen, v, n_vocab) for v in (u - MARGIN, u, u + MARGIN)}
        ranked = {likeliest_first(seen, v) for v in (u - MARGIN, u, u + MARGIN)}
        if len(deval) == 1 and len(ranked) == 1 and None not in deval | ranked and deval != ranked:
            found.append((seed, deval.pop()))
            if len(found) == count:
                break
    return found


class CompletionDraws:
    """The server's one-token draws at text (or token-id) prompts, and whether they are deval's."""

    def __init__(self, backend, vocab: Vocab):
        self.backend = backend
        self.vocab = vocab
        self.checked: bool | None = None  # the server's draw is deval's (None: not checked yet)

    async def draw(self, transport: "Transport", prompt, seed: int) -> int | None:
        """The token the server draws at a prompt with a seed (end of text where it wrote nothing and stopped);
        None where its text names no single token (several tokens spell it) or the server refuses the request."""
        body = {"model": self.backend.model, "prompt": prompt, "max_tokens": 1, "logprobs": 1, "temperature": 1.0,
                "seed": int(seed)} | dict(self.backend.capabilities().sampling)  # no min_tokens: it bans the end
        try:
            choice = (await self.backend._fetch(transport, "completions", body, 1))[0]
        except Refused:
            return None
        if not choice.tokens:
            return self.vocab.llm.token_eos() if choice.finish_reason == "stop" and not choice.text else None
        token = choice.tokens[0]
        if token.key.startswith("t:") and token.key[2:] in self.vocab.ambiguous:
            return None
        return self.vocab.token_id(token.key, token.raw)

    async def check(self, transport: "Transport", prompt, seen: dict[int, float]) -> None:
        """Whether the server's draws at a prompt are deval's over the row `seen` asked there (left undecided
        where the row offers no seed that tells the two orders apart)."""
        seeds = [(seed, want) for seed, want in check_seeds(seen, self.vocab.n_vocab, 3 * CHECK_SEEDS)
                 if self.vocab.piece(want).decode("utf-8", "ignore") not in self.vocab.ambiguous][:CHECK_SEEDS]
        if not seeds:
            return
        for seed, want in seeds:  # a refused or unreadable draw fails the check too
            if await self.draw(transport, prompt, seed) != want:
                self.checked = False
                return
        self.checked = True

