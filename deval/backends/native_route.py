"""Rows and draws on llama.cpp's native `/completion` route at token-id prefixes, through the response cache.

Rows: the next-token distribution at a prefix, a LIGHT_TOP row first and the whole vocabulary where it cannot
answer (issue 11).

Draws: deval's draw (core.sampling.draw) is llama.cpp's `dist` sampler: the inverse CDF in token-id order at the
uniform number std::mt19937 gives for a 32-bit seed. So llama-server, given the draw's seed and neutral sampler
settings, draws the very token deval would draw from the whole row, in one request that writes no probabilities
(about 25 ms here, against 0.5 s for a whole row of 4.7 MB). This is checked once per backend, on a whole row and
seeds where the two orders of the inverse CDF (token id, likeliest first) part; a server that fails the check (an
older build sorts the row before drawing) gets deval's own draws from the rows.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from deval.backends import native
from deval.backends.cache import request_key
from deval.backends.urls import redact
from deval.backends.vocab import Vocab
from deval.core.sampling import draw_at, draw_seed, seed_uniform
from deval.errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from deval.backends.http import Transport

STEP_SEED = 0  # the distribution at a prefix does not depend on the seed: one cache key per prefix
LIGHT_TOP = 4000  # rows this long first, the whole vocabulary only where they cannot answer
CHECK_SEEDS = 4  # seeds the server's draw is checked on, each parting the two orders of the inverse CDF
DRAWN = "deval-native-draw"  # a server draw's cache record


def full_row(row: dict[int, float], n_vocab: int) -> np.ndarray:
    """A whole-vocabulary row (token id -> logprob) as the local backend's array."""
    logp = np.full(n_vocab, -np.inf)
    logp[np.fromiter(row, dtype=np.int64, count=len(row))] = np.fromiter(row.values(), dtype=np.float64,
                                                                         count=len(row))
    return logp


def check_seeds(logp: np.ndarray, count: int = CHECK_SEEDS, tries: int = 20000) -> list[int]:
    """Seeds at which the inverse CDF in token-id order and likeliest first give different tokens, each uniform
    clear of a token boundary by 1e-6 of the mass (float32 against float64 sums cannot move it across)."""
    weights = np.exp(logp - np.max(logp))
    by_id = np.cumsum(weights)
    order = np.argsort(-logp, kind="stable")
    by_rank = np.cumsum(weights[order])
    margin = 1e-6 * by_id[-1]
    seeds = []
    for seed in range(1, tries):
        target = seed_uniform(seed) * by_id[-1]
        j = min(int(np.searchsorted(by_id, target, side="right")), len(by_id) - 1)
        clear = target - (by_id[j - 1] if j else 0.0) > margin and by_id[j] - target > margin
        if clear and j != int(order[min(int(np.searchsorted(by_rank, target, side="right")), len(order) - 1)]):
            seeds.append(seed)
            if len(seeds) == count:
                break
    return seeds


class NativeRoute:
    """A backend's rows and draws on the native route (one in flight, pinned to `slot`, where the stepper is
    sequential)."""

    def __init__(self, backend, vocab: Vocab, top: int, url: str, slot: int | None):
        self.backend = backend
        self.vocab = vocab
        self.top = top
        self.url = url
        self.slot = slot
        self.cold: tuple[list[int], dict[int, float]] | None = None  # the prompt decoded cold, and its whole row
        self.server_draws: bool | None = None  # the server's draw is deval's (None: not checked yet)

    def at_prompt(self, tokens: list[int]) -> bool:
        """The prefix is the prompt decoded cold, whose whole row is held here."""
        return self.cold is not None and self.cold[0] == list(tokens)

    @property
    def whole(self) -> bool:
        """Rows are the whole vocabulary (else a top-k like any other route's)."""
        return self.top >= self.vocab.n_vocab

    def request(self, tokens: list[int], n_probs: int) -> tuple[dict, str]:
        """The body asking the row of n_probs entries at a token-id prefix, and its response-cache key."""
        body = native.body([int(t) for t in tokens], n_probs, STEP_SEED, self.backend.capabilities().sampling,
                           eos=self.vocab.llm.token_eos())
        return body, request_key(self.backend.settings.base_url, native.ROUTE, body)

    async def row(self, transport: "Transport", tokens: list[int], n_probs: int | None = None,
                  cold: bool = False) -> tuple[dict[int, float], float]:
        """The row at a prefix (n_probs, else top), and its mass; cold: decoded in one batch from an empty cache
        (asked even where the cache holds the row), kept as the row at the prompt for every run of the task."""
        from deval.backends.http import Transient
        from deval.backends.logprobs import Malformed, NoLogprobs

        n_probs = n_probs or self.top
        if not cold and self.at_prompt(tokens) and n_probs <= self.top:
            seen = self.cold[1]  # the whole row answers a light request too
            return seen, float(np.exp(np.fromiter(seen.values(), dtype=np.float64)).sum())
        body, key = self.request(tokens, n_probs)
        # not in the key: the row is the same whichever slot computed it; a cold row is the row at its prefix
        body |= {"id_slot": self.slot} if self.slot is not None else {}
        body |= {"cache_prompt": False} if cold else {}
        record = None if cold else self.backend.cache.get(key)
        if record is not None:
            ids, lps = native.read_row(record)
        else:
            got: list = []

            def check(data: dict) -> None:
                try:
                    got[:] = native.read_row(data)
                except NoLogprobs as exc:  # the same prefix gets the same answer: asking again cannot help
                    raise BackendError(f"{redact(self.url)}: no probabilities at a prefix ({exc})") from None
                except Malformed as exc:
                    raise Transient(f"unusable native answer: {exc}") from None

            self.backend.requests += 1
            await transport.post(self.url, body, check, native.parse)
            ids, lps = got
            self.backend.cache.put(key, native.pack(ids, lps, self.vocab.n_vocab))
        keep = np.isfinite(lps)
        seen = dict(zip(ids[keep].tolist(), lps[keep].tolist()))
        if cold:
            self.cold = (list(tokens), seen)
        return seen, float(np.exp(lps[keep]).sum())

    async def dist(self, transport: "Transport", tokens: list[int], wanted, plain: bool):
        """At T=1 without filters only the trie tokens' values count: a LIGHT_TOP row holding them all is exact;
        else (a trie token below it, another temperature, filters) the whole vocabulary."""
        if plain and self.whole and wanted is not None and LIGHT_TOP < self.top:
            seen, mass = await self.row(transport, tokens, LIGHT_TOP)
            if all(t in seen for t in wanted):
                return seen, mass
        return await self.row(transport, tokens)

    async def draw(self, transport: "Transport", tokens: list[int], rng: np.random.Generator) -> int:
        """core.sampling.draw over the whole row at a prefix: made here from the prompt's cold row; by the server
        where its draw passed the check; else from a light row where it decides the draw, or the whole row (the
        check is made on the first whole row asked)."""
        seed = draw_seed(rng)
        at_prompt = self.at_prompt(tokens)
        if self.server_draws and not at_prompt:
            return await self.server_draw(transport, tokens, seed)
        if self.server_draws is False and LIGHT_TOP < self.top and not at_prompt:  # decided by a light row if it can
            token = native.decided_draw((await self.row(transport, tokens, LIGHT_TOP))[0], seed_uniform(seed),
                                        self.vocab.n_vocab)
            if token is not None:
                return token
        logp = full_row((await self.row(transport, tokens))[0], self.vocab.n_vocab)
        if self.server_draws is None and not at_prompt:
            await self._check(transport, tokens, logp)
        return draw_at(logp, seed_uniform(seed))

    async def server_draw(self, transport: "Transport", tokens: list[int], seed: int) -> int:
        """The token llama-server draws itself at a prefix with a seed (neutral samplers: its `dist` alone)."""
        body = native.body([int(t) for t in tokens], 0, seed, self.backend.capabilities().sampling) | {
            "return_tokens": True}
        key = request_key(self.backend.settings.base_url, native.ROUTE, body)
        record = self.backend.cache.get(key)
        if record is not None and isinstance(record.get(DRAWN), int):
            return record[DRAWN]
        body |= {"id_slot": self.slot} if self.slot is not None else {}
        self.backend.requests += 1
        data, _ = await transport.post(self.url, body)
        token = native.drawn(data, self.vocab.llm.token_eos())
        if token is None:
            raise BackendError(f"{redact(self.url)}: the server's draw names no token (no 'tokens' in its answer)")
        self.backend.cache.put(key, json.dumps({DRAWN: token}).encode())
        return token

    async def _check(self, transport: "Transport", tokens: list[int], logp: np.ndarray) -> None:
        """Whether the server's draw is deval's: its draws at seeds that part the token-id and likeliest-first
        orders, against deval's draw over the whole row it sent (undecided where no such seed is found)."""
        seeds = check_seeds(logp)
        if not seeds:
            return
        eog = self.vocab.eog
        for seed in seeds:
            got, want = await self.server_draw(transport, tokens, seed), draw_at(logp, seed_uniform(seed))
            if got != want and not (got in eog and want in eog):
                self.server_draws = False
                return
        self.server_draws = True
