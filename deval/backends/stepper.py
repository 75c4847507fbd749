"""Runs driven step by step over HTTP, as the local backend drives them in-process (issue 11).

Where the server continues a raw prompt (the completions route), deval asks for the next-token distribution at
each prefix (max_tokens 1, top-k logprobs), takes p_t(item) by the chain rule down the item trie (one request per
trie node, identical prefixes answered by the response cache) and makes the draw itself with the run's seeded
generator, exactly as LocalBackend._sample_item does: the same seed walks the same trajectory wherever the
distributions agree. The prompt goes through the model's chat template and items are tokenized with a GGUF's
tokenizer (--tokenizer PATH.gguf, loaded vocab-only). A server that takes text only (llama-cpp-python) gets a
prefix whose text it would tokenize otherwise than the path deval walked as the longest prefix it does tokenize
so, and generates the rest itself (forced_prefix); where that fails the step is flagged `retokenized`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from deval.backends.http import Refused
from deval.backends.urls import redact
from deval.backends.vocab import Vocab
from deval.errors import BackendError
from deval.core.answers import answer_budget, find_positions
from deval.core.protocol import RunSpec, Step
from deval.backends.completion_draws import CompletionDraws
from deval.backends.forced_prefix import LIGHT, ForcedPrefixes
from deval.backends.native_route import STEP_SEED, NativeRoute, full_row
from deval.core.sampling import draw_at, draw_seed, sampling_logprobs, seed_uniform
from deval.core.trie import chain_rule, item_logprobs

if TYPE_CHECKING:  # pragma: no cover
    from deval.backends.http import Transport  # noqa: F811

FULL_MASS = 0.999  # a visible top-k holding this much is taken as the whole distribution


class Stepper:
    """Drives runs step by step through a backend's cached fetch on the completions or native route."""

    def __init__(self, backend, vocab: Vocab, top: int, native_url: str | None = None, sequential: bool = False):
        self.backend = backend
        self.vocab = vocab
        self.top = top
        self.native_url = native_url
        # one request in flight, runs one after another (else --concurrency): the server's prompt cache then holds
        # the run's own last prefix, as in-process; native: every request to slot 0
        self.sequential = sequential
        # llama.cpp's native /completion: rows of `top` entries and draws at token-id prefixes
        self.native = NativeRoute(backend, vocab, top, native_url, 0 if sequential else None) if native_url else None
        # the server takes a prompt of token ids (llama-server); None: untried
        self.token_prompts: bool | None = True if native_url else None
        self._cold: list[int] | None = None  # the prompt the server holds decoded cold (in one batch)
        self.tail_draws: bool | None = None  # the server draws with visible tokens banned (None: untried)
        self.draws = CompletionDraws(backend, vocab)  # the server's own free draws (off the native route)
        self.forced = ForcedPrefixes(backend, vocab)  # rows at paths a text prompt would not reach

    @property
    def server_draws(self) -> bool | None:
        """The server's draws passed the check and make the free draws (None: not checked)."""
        return self.native.server_draws if self.native is not None else self.draws.checked

    async def _cold_prompt(self, transport: "Transport", text: str, tokens: list[int], trie) -> None:
        """The completions route's cold start (llama-cpp-python: one sequence, reused from the longest common
        prefix): a one-token prompt that shares no token with the run's prompt empties the server's cache, then
        the row at the prompt is asked past the response cache, so the server decodes the prompt in one batch."""
        await self._flush(transport, tokens)
        await self._dist(transport, text, trie.children.get((), ()), tokens, fresh=True)

    async def _flush(self, transport: "Transport", tokens: list[int]) -> None:
        """Empties the server's prompt cache (one sequence, reused from the longest common prefix): a one-token
        prompt that shares no token with `tokens`."""
        flush = next(t for t in range(self.vocab.n_vocab) if t not in tokens[:1] and self.vocab.text([t]).isalpha())
        await self._ask(transport, self.vocab.text([flush]), 1, [flush], fresh=True)

    async def _ask(self, transport: "Transport", text: str, top: int, tokens: list[int] | None = None,
                   fresh: bool = False):
        # min_tokens 1: an end-of-text draw would come back with no token and so no logprobs (llama-cpp-python);
        # it blocks the draw only, the logprobs stay the model's (checked against in-process values)
        body = {"model": self.backend.model, "prompt": text, "max_tokens": 1, "min_tokens": 1, "logprobs": top,
                "temperature": 1.0, "seed": STEP_SEED} | dict(self.backend.capabilities().sampling)
        if tokens is not None and self.token_prompts is not False:  # token ids: exactly the path deval walked
            try:
                choice = (await self.backend._fetch(transport, "completions", body | {"prompt": tokens}, 1,
                                                    fresh))[0]
                self.token_prompts = True
                return choice.tokens[0] if choice.tokens else None
            except (Refused, BackendError):
                if self.token_prompts:
                    raise
                self.token_prompts = False  # text only (llama-cpp-python): tokenization is the server's
        if tokens is not None and self._retokenized(text, tokens):  # the path's tail generated (forced_prefix)
            token = await self.forced.row(transport, body, text, tokens, self._retokenized, fresh)
            if token is not None:
                return token
        choice = (await self.backend._fetch(transport, "completions", body, 1, fresh))[0]
        return choice.tokens[0] if choice.tokens else None

    async def _dist(self, transport: "Transport", text: str, wanted=(), tokens: list[int] | None = None,
                    plain: bool = False, fresh: bool = False) -> tuple[dict[int, float], float]:
        """The visible T=1 row at a prefix. Text-keyed top-k (llama-cpp-python) keep, for a text several tokens
        spell, the value of the *last* (least likely) of them at the position of the first: where a wanted
        token's value is out of order it was overwritten, and is asked again with a top-k that ends at it."""
        if self.native_url is not None:  # ids, not text: nothing collapses
            return await self.native.dist(transport, tokens, wanted, plain)
        if plain and wanted and LIGHT < self.top and self._forcing(text, tokens):  # the trie tokens' values count
            token = await self._ask(transport, text, LIGHT, tokens, fresh)
            reached = token is not None and self.forced.reached(tokens)
            seen, mass = self.vocab.visible_row(token, trusted=True) if reached else ({}, 0.0)
            if all(t in seen for t in wanted):
                return seen, mass
        token = await self._ask(transport, text, self.top, tokens, fresh)
        if token is None:
            return {}, 0.0
        seen, mass = self.vocab.visible_row(token)
        keys = [a.key for a in token.top]
        if wanted is None:  # every visible text several tokens spell (free generation draws from all of them)
            wanted = [self.vocab.by_text[k[2:]] for k in keys if k.startswith("t:") and k[2:] in self.vocab.ambiguous]
        for tok in wanted:
            key = "t:" + self.vocab.text([tok])
            if key not in keys or self.vocab.by_text.get(key[2:]) != tok:
                continue
            i = keys.index(key)
            if i + 1 < len(keys) and token.top[i + 1].logprob > token.top[i].logprob + 1e-9:
                again = await self._ask(transport, text, i + 1, tokens, fresh)
                value = next((a.logprob for a in (again.top if again else ()) if a.key == key), None)
                if value is not None and math.isfinite(value):
                    mass += math.exp(value) - math.exp(seen.get(tok, -math.inf))
                    seen[tok] = value
        return seen, mass

    def _sampling(self, seen: dict[int, float], mass: float, spec: RunSpec) -> dict[int, float]:
        """The sampling log-probabilities of the visible tokens (exact at T=1 without filters, else from the row)."""
        if spec.temperature == 1.0 and not spec.filters.active:
            return seen
        ids = np.fromiter(seen, dtype=np.int64)
        row = np.full(self.vocab.n_vocab, -np.inf)
        row[ids] = np.fromiter(seen.values(), dtype=np.float64)
        row -= math.log(mass)  # the visible part renormalised: exact when the whole distribution came back
        out = sampling_logprobs(row, spec.temperature, spec.filters)
        return {int(i): float(out[i]) for i in ids}

    def _retokenized(self, text: str, tokens: list[int]) -> bool:
        """Whether a text prompt would reach the server as other tokens than the path deval walked."""
        if self.token_prompts is True:
            return False
        lead = tokens[:1] if self.vocab._formatter is None and tokens[:1] == [self.vocab.llm.token_bos()] else []
        return self.vocab.tokenize(text, special=True) != tokens[len(lead):]

    def _forcing(self, text: str, tokens: list[int]) -> bool:
        """The row at this prefix is asked by generating the path's tail (forced_prefix), as far as known."""
        return self._retokenized(text, tokens) and self.forced.works is not False

    def _unreached(self, text: str, tokens: list[int]) -> bool:
        """The row asked at a prefix came from other tokens than deval's path (the text, retokenized)."""
        return self._retokenized(text, tokens) and not self.forced.reached(tokens)

    async def _measure(self, transport: "Transport", spec: RunSpec, trie, context: str, tokens: list[int],
                       step: int, item: int | None, text: str, flags: tuple[str, ...]) -> tuple[Step, dict]:
        """The Step at one item position (context and tokens end just before the position's token)."""
        task, vocab = spec.task, self.vocab
        rows, masses = {}, {}
        chain = trie.lookahead()  # in-process order: the root, the lookahead chain, the other nodes
        ahead = [chain[:i] for i in range(1, len(chain) + 1)]
        for node in [()] + ahead + [n for n in trie.interior() if n not in ahead]:
            if node and (node[:-1] not in rows or node[-1] not in rows[node[:-1]]):
                continue  # its parent token is not visible: its mass counts as unseen
            seen, mass = await self._dist(transport, context + vocab.text(node), trie.children.get(node, ()),
                                          tokens + list(node), spec.temperature == 1.0 and not spec.filters.active)
            masses[node] = mass
            rows[node] = self._sampling(seen, mass, spec)
        unreached = any(self._unreached(context + vocab.text(node), tokens + list(node)) for node in rows)
        flags = list(flags) + (["retokenized"] if unreached else [])
        # a trie token below a node's top-k holds at most that node's smallest visible probability
        unseen = sum(math.exp(min(rows[n].values(), default=0.0)) * sum(k not in rows[n] for k in kids)
                     for n in rows for kids in [trie.children.get(n, ())])
        plain = spec.temperature == 1.0 and not spec.filters.active
        exact = unseen == 0.0 and (plain or masses[()] >= FULL_MASS)
        probs = chain_rule(trie.children, trie.ends,
                           lambda node, tok: math.exp(rows.get(node, {}).get(tok, -math.inf)), len(task.items))
        missing = tuple(i for i, p in enumerate(probs) if p == 0.0)
        tail = 0.0 if exact else max(0.0, 1.0 - masses[()]) if not plain else min(unseen, 1.0 - masses[()])
        if not exact:
            flags.append("missing-items" if missing else "trie-tokens-below-top-k")
        known = None
        if exact and plain:  # rows[()] holds T=1 values
            root = np.full(vocab.n_vocab, -np.inf)
            root[list(rows[()])] = list(rows[()].values())
            known = item_logprobs(trie, root, len(task.items))
        return Step(task=task.name, run=spec.run, step=step, probs=tuple(probs.tolist()), sampled=item, text=text,
                    final=False, tail=tail, missing=() if exact else missing, flags=tuple(dict.fromkeys(flags)),
                    tail_cap=None if exact else tail, item_logprobs=known), rows

    async def _row_draw(self, transport: "Transport", spec: RunSpec, text: str, tokens: list[int], seed: int,
                        rng: np.random.Generator, flags: set[str]) -> int | None:
        """One token drawn from the visible row at a prefix as the local draw with its seed (None: nothing
        visible)."""
        seen, mass = await self._dist(transport, text, None, tokens)
        if self._unreached(text, tokens):
            flags.add("retokenized")
        row = self._sampling(seen, mass, spec)
        if not row:
            return None
        if len(row) == self.vocab.n_vocab:  # the whole distribution (native route): the local draw itself
            return draw_at(full_row(row, self.vocab.n_vocab), seed_uniform(seed))
        ids = np.fromiter(row, dtype=np.int64, count=len(row))
        values = np.fromiter(row.values(), dtype=np.float64, count=len(row))
        # core.sampling.draw walks the vocabulary in id order: so does this one (exact only where the tokens
        # below the top-k hold no mass before the drawn one: a free walk may leave the trajectory)
        order = np.argsort(ids, kind="stable")
        cdf = np.cumsum(np.exp(values[order]))
        u = seed_uniform(seed)  # scaled by the whole distribution's mass (1), as the local draw
        j = int(np.searchsorted(cdf, u, side="right"))
        if j >= len(ids):  # the local draw would take a token below the top-k: the walk leaves its trajectory
            plain = spec.temperature == 1.0 and not spec.filters.active
            tok = await self._tail_draw(transport, text, tokens, ids, int(rng.integers(2**31))) if plain else None
            if tok is not None:
                flags.add("server-tail-draw")
                return tok
            flags.add("draw-below-top-k")
        return int(ids[order[min(j, len(ids) - 1)]])

    async def _tail_draw(self, transport: "Transport", text: str, tokens: list[int], seen, seed: int) -> int | None:
        """The server's own draw with the visible tokens banned (logit bias): where deval's draw fell past the
        top-k's mass, a draw from the rest of the row in proportion, so the walk stays a draw from the whole
        distribution (not the in-process trajectory). None where the server refuses the bias."""
        if self.tail_draws is False:
            return None
        sampling = self.backend.capabilities().sampling
        try:
            if self.native_url is not None:
                from deval.backends import native

                body = native.body([int(t) for t in tokens], 1, seed, sampling) | {
                    "logit_bias": [[int(i), False] for i in seen], "return_tokens": True}
                self.backend.requests += 1
                data, _ = await transport.post(self.native_url, body)
                self.tail_draws = True
                return native.drawn(data, self.vocab.llm.token_eos())
            body = {"model": self.backend.model, "prompt": tokens if self.token_prompts else text, "max_tokens": 1,
                    "logprobs": 1, "temperature": 1.0, "seed": seed,
                    "logit_bias": {str(int(i)): -100 for i in seen}} | dict(sampling)
            choice = (await self.backend._fetch(transport, "completions", body, 1))[0]
        except (Refused, BackendError):
            if self.tail_draws:
                raise
            self.tail_draws = False
            return None
        self.tail_draws = True
        if not choice.tokens:
            return self.vocab.llm.token_eos()
        return self.vocab.token_id(choice.tokens[0].key, choice.tokens[0].raw)

    async def _free_draw(self, transport: "Transport", spec: RunSpec, text: str, tokens: list[int],
                         rng: np.random.Generator, flags: set[str], cold: bool = False) -> int | None:
        """One free draw off the native route: the server's own (completion_draws) at T=1 without filters where
        it passed the check (cold: with the server's cache emptied first, so it decodes the prompt in one batch
        as a run in-process does), else from the visible row."""
        seed = draw_seed(rng)
        prompt = tokens if self.token_prompts else text
        retokenized = self._retokenized(text, tokens)
        # at a path its text does not reach, deval draws over the row after the path (forced_prefix): from the
        # entries that name one token each where they decide the draw (a light row, then the whole), else as below
        forced = retokenized and self.forced.works is not False
        plain = spec.temperature == 1.0 and not spec.filters.active
        for top in sorted({min(LIGHT, self.top), self.top}) if forced and plain else ():
            token = await self._ask(transport, text, top, tokens)
            tok = self.forced.light_draw(token, seed_uniform(seed)) if token and self.forced.reached(tokens) else None
            if tok is not None:
                return tok
        if plain and self.draws.checked is not False:
            if self.draws.checked is None and not retokenized:
                await self.draws.check(transport, prompt, (await self._dist(transport, text, None, tokens))[0])
            if self.draws.checked and cold:
                await self._flush(transport, tokens)
            if self.draws.checked and not forced:
                if retokenized:  # the server draws after other tokens than deval's path
                    flags.add("retokenized")
                tok = await self.draws.draw(transport, prompt, seed)
                if tok is not None:
                    return tok
                flags.add("ambiguous-draw")  # its text names several tokens: deval's draw over the text-keyed row
        return await self._row_draw(transport, spec, text, tokens, seed, rng, flags)

    async def _generate(self, transport: "Transport", spec: RunSpec, context: str, tokens: list[int],
                        rng: np.random.Generator, first: bool = False):
        """LocalBackend._generate over HTTP: one token at a time from the visible row, drawn as the local draw."""
        vocab = self.vocab
        generated: list[int] = []
        pieces: list[bytes] = []
        flags: set[str] = set()
        cut = True
        while len(generated) < answer_budget(spec.task.items, spec.limit):
            if self.native is not None and self.native.whole and spec.temperature == 1.0 and not spec.filters.active:
                tok = await self.native.draw(transport, tokens + generated, rng)
            else:
                tok = await self._free_draw(transport, spec, context + vocab.text(generated), tokens + generated,
                                            rng, flags, cold=first and self.sequential and not generated)
                if tok is None:
                    break
            if tok in vocab.eog:
                cut = False
                break
            generated.append(tok)
            pieces.append(vocab.piece(tok))
            if find_positions(pieces, spec.task.matcher, spec.limit, cut=True).ended:
                cut = False
                break
        answer = find_positions(pieces, spec.task.matcher, spec.limit, cut=cut)
        return generated, dataclasses.replace(answer, flags=answer.flags + tuple(sorted(flags)))

    async def run(self, transport: "Transport", spec: RunSpec) -> list[Step]:
        """LocalBackend._run's free mode, step by step over HTTP: the same prompt, positions and draws."""
        rng = np.random.default_rng(spec.seed)
        vocab = self.vocab
        trie = vocab.item_trie(spec.task.matcher)
        context, tokens = vocab.prompt(spec)
        if self.sequential and self._cold != tokens:  # the prompt decoded cold, once: its row is that decode's
            await (self.native.row(transport, tokens, cold=True) if self.native else
                   self._cold_prompt(transport, context, tokens, trie))
            self._cold = tokens
        if spec.positions == "constrained":
            return await self._run_constrained(transport, spec, trie, context, tokens, rng)
        steps: list[Step] = []
        for g in range(1 if spec.mode == "sequence" else spec.steps):
            generated, answer = await self._generate(transport, spec, context, tokens, rng, first=g == 0)
            chosen = answer.positions[: spec.steps - len(steps)]
            measured = []
            # last position first, as in-process: the server then decodes each row one token on a prefix it
            # holds (walking forward, it would decode the tokens between two positions in one batch)
            for k, pos in reversed(list(enumerate(chosen))):
                head = generated[:pos.token]
                measured.append((await self._measure(transport, spec, trie, context + vocab.text(head),
                                                     tokens + head, len(steps) + k, pos.item, pos.text,
                                                     answer.flags))[0])
            steps += reversed(measured)
            if not answer.positions and not steps and spec.mode == "sequence":  # nothing written: measure the start
                steps.append((await self._measure(transport, spec, trie, context, tokens, 0, None, "",
                                                  answer.flags + ("empty-output",)))[0])
        if not steps:
            steps.append((await self._measure(transport, spec, trie, context, tokens, 0, None, "", ("empty-output",)))[0])
        short = ("short-run",) if len(steps) < spec.steps else ()
        last = steps[-1]
        steps[-1] = Step(**{**last.__dict__, "final": True, "flags": tuple(dict.fromkeys(last.flags + short))})
        return steps

    async def _run_constrained(self, transport: "Transport", spec: RunSpec, trie, context: str, tokens: list[int],
                               rng: np.random.Generator) -> list[Step]:
        """LocalBackend._run_constrained over HTTP: each draw among the item spellings (renormalised, over the
        visible rows), the separator after it; the unconstrained item probabilities are what is recorded."""
        from deval.backends.local import end_paths, pick_path

        separator = self.vocab.tokenize(spec.task.separator)
        steps = []
        for t in range(spec.steps):
            step, rows = await self._measure(transport, spec, trie, context, tokens, t, None, "", ("constrained",))
            dists = {node: _Row(row) for node, row in rows.items()}
            path, item = pick_path(end_paths(trie, _Dists(dists)), rng)
            steps.append(Step(**{**step.__dict__, "sampled": item, "text": self.vocab.text(path),
                                 "final": t == spec.steps - 1}))
            if spec.mode == "sequence":
                context += self.vocab.text(list(path) + separator)
                tokens = tokens + list(path) + separator
        return steps


class _Row(dict):
    """A visible row: a token below the top-k reads as log-probability -inf."""

    def __missing__(self, key):
        return -math.inf


class _Dists(dict):
    """Trie-node rows: a node whose row was not asked (its parent token not visible) reads as all -inf."""

    def __missing__(self, key):
        return _Row()
