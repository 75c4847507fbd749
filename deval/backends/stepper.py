"""Runs driven step by step over HTTP, as the local backend drives them in-process (issue 11).

Where the server continues a raw prompt (the completions route), deval asks for the next-token distribution at
each prefix (max_tokens 1, top-k logprobs), takes p_t(item) by the chain rule down the item trie (one request per
trie node, identical prefixes answered by the response cache) and makes the draw itself with the run's seeded
generator, exactly as LocalBackend._sample_item does: the same seed walks the same trajectory wherever the
distributions agree. The prompt goes through the model's chat template and items are tokenized with a GGUF's
tokenizer (--tokenizer PATH.gguf, loaded vocab-only); the server gets text, so a prefix whose text tokenizes
differently from the token path deval walked is flagged `retokenized`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from deval.backends.http import Refused
from deval.backends.logprobs import Token
from deval.errors import BackendError
from deval.core.protocol import RunSpec, Step
from deval.core.sampling import sampling_logprobs
from deval.core.trie import chain_rule, item_logprobs

if TYPE_CHECKING:  # pragma: no cover
    from deval.backends.http import Transport  # noqa: F811

FULL_MASS = 0.999  # a visible top-k holding this much is taken as the whole distribution
STEP_SEED = 0  # the distribution at a prefix does not depend on the seed: one cache key per prefix


class Vocab:
    """A GGUF's tokenizer, token pieces and chat template, loaded vocab-only (no weights)."""

    def __init__(self, path: str):
        from pathlib import Path

        from deval.backends.local import LocalBackend, check_model_file, open_llama

        self.llm = open_llama(check_model_file(Path(path)), vocab_only=True, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        self._pieces = [self.llm.detokenize([i]) for i in range(self.n_vocab)]
        self._tries: dict = {}
        self.raw_prompt = False
        self._formatter = LocalBackend._chat_formatter(self)
        self.by_text: dict[str, int] = {}
        self.by_bytes: dict[bytes, int] = {}
        shared: dict[str, list[int]] = {}
        for i, piece in enumerate(self._pieces):
            self.by_bytes.setdefault(piece, i)
            shared.setdefault(piece.decode("utf-8", "replace"), []).append(i)
        for text, ids in shared.items():  # a text several tokens spell (" " and the byte token <0x20>): the one
            canonical = self.tokenize(text) if len(ids) > 1 else ids  # the tokenizer writes for it, as servers do
            self.by_text[text] = canonical[0] if len(canonical) == 1 and canonical[0] in ids else ids[0]
        self._item_trie = LocalBackend.item_trie

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def item_trie(self, items):
        return self._item_trie(self, items)

    def text(self, tokens) -> str:
        return b"".join(self._pieces[t] for t in tokens).decode("utf-8", "replace")

    def prompt(self, prompt: str) -> tuple[str, list[int]]:
        """The prompt as the model sees it in-process: rendered through the GGUF's chat template, and its tokens."""
        if self._formatter is None:
            return prompt, self.tokenize(prompt, special=False)
        text = self._formatter(messages=[{"role": "user", "content": prompt}]).prompt
        return text, self.tokenize(text, special=True)

    def token_id(self, key: str, raw: bytes) -> int | None:
        if key.startswith("id:"):
            return int(key[3:])
        if key.startswith("b:"):
            return self.by_bytes.get(raw)
        return self.by_text.get(key[2:])

    def close(self) -> None:
        self.llm.close()


def visible_row(token: Token, vocab: Vocab) -> tuple[dict[int, float], float]:
    """Token id -> T=1 logprob of every visible candidate at one position, and their total mass."""
    seen: dict[int, float] = {}
    for key, raw, lp in [(a.key, a.raw, a.logprob) for a in token.top] + [(token.key, token.raw, token.logprob)]:
        i = vocab.token_id(key, raw)
        if i is not None and math.isfinite(lp):
            seen.setdefault(i, lp)
    return seen, float(sum(math.exp(v) for v in seen.values()))


class Stepper:
    """Drives one run at a time through a backend's cached fetch on the completions route."""

    def __init__(self, backend, vocab: Vocab, top: int):
        self.backend = backend
        self.vocab = vocab
        self.top = top
        self.token_prompts: bool | None = None  # the server takes a prompt of token ids (llama-server); None: untried

    async def _ask(self, transport: "Transport", text: str, top: int, tokens: list[int] | None = None):
        # min_tokens 1: an end-of-text draw would come back with no token and so no logprobs (llama-cpp-python);
        # it blocks the draw only, the logprobs stay the model's (checked against in-process values)
        body = {"model": self.backend.model, "prompt": text, "max_tokens": 1, "min_tokens": 1, "logprobs": top,
                "temperature": 1.0, "seed": STEP_SEED} | dict(self.backend.capabilities().sampling)
        if tokens is not None and self.token_prompts is not False:  # token ids: exactly the path deval walked
            try:
                choice = (await self.backend._fetch(transport, "completions", body | {"prompt": tokens}, 1))[0]
                self.token_prompts = True
                return choice.tokens[0] if choice.tokens else None
            except (Refused, BackendError):
                if self.token_prompts:
                    raise
                self.token_prompts = False  # text only (llama-cpp-python): tokenization is the server's
        choice = (await self.backend._fetch(transport, "completions", body, 1))[0]
        return choice.tokens[0] if choice.tokens else None

    async def _dist(self, transport: "Transport", text: str, wanted=(),
                    tokens: list[int] | None = None) -> tuple[dict[int, float], float]:
        """The visible T=1 row at a prefix. Text-keyed top-k (llama-cpp-python) keep, for a text several tokens
        spell, the value of the *last* (least likely) of them at the position of the first: where a wanted
        token's value is out of order it was overwritten, and is asked again with a top-k that ends at it."""
        token = await self._ask(transport, text, self.top, tokens)
        if token is None:
            return {}, 0.0
        seen, mass = visible_row(token, self.vocab)
        keys = [a.key for a in token.top]
        for tok in wanted:
            key = "t:" + self.vocab.text([tok])
            if key not in keys or self.vocab.by_text.get(key[2:]) != tok:
                continue
            i = keys.index(key)
            if i + 1 < len(keys) and token.top[i + 1].logprob > token.top[i].logprob + 1e-9:
                again = await self._ask(transport, text, i + 1, tokens)
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

    async def run(self, transport: "Transport", spec: RunSpec) -> list[Step]:
        rng = np.random.default_rng(spec.seed)
        task = spec.task
        vocab = self.vocab
        trie = vocab.item_trie(task.items)
        separator = vocab.tokenize(task.separator)
        context, tokens = vocab.prompt(spec.prompt)
        steps = []
        for t in range(spec.steps):
            flags: list[str] = []
            if self.token_prompts is not True and vocab.tokenize(context, special=True) != tokens:
                flags.append("retokenized")
            rows, masses = {}, {}
            for node in [()] + sorted(trie.interior(), key=len):
                if node and (node[:-1] not in rows or node[-1] not in rows[node[:-1]]):
                    continue  # its parent token is not visible: its mass counts as unseen
                seen, mass = await self._dist(transport, context + vocab.text(node), trie.children.get(node, ()),
                                              tokens + list(node))
                masses[node] = mass
                rows[node] = self._sampling(seen, mass, spec)
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
            path, item, text = self._sample(trie, rows, rng)
            known = None
            if exact and spec.temperature == 1.0 and not spec.filters.active:  # rows[()] holds T=1 values
                root = np.full(vocab.n_vocab, -np.inf)
                root[list(rows[()])] = list(rows[()].values())
                known = item_logprobs(trie, root, len(task.items))
            steps.append(Step(task=task.name, run=spec.run, step=t, probs=tuple(probs.tolist()), sampled=item,
                              text=text, final=t == spec.steps - 1, tail=tail, missing=() if exact else missing,
                              flags=tuple(flags), tail_cap=None if exact else tail, item_logprobs=known))
            if spec.mode == "sequence":  # as the local backend: an off-set draw writes only the separator
                step_tokens = (list(path) if item is not None else []) + separator
                context += vocab.text(step_tokens)
                tokens = tokens + step_tokens
        return steps

    def _sample(self, trie, rows: dict, rng: np.random.Generator) -> tuple[tuple[int, ...], int | None, str]:
        """LocalBackend._sample_item on the visible rows: trie tokens first, one uniform per level."""
        node: tuple[int, ...] = ()
        while True:
            dist = rows.get(node, {})
            kids = sorted(trie.children.get(node, ()))
            cum = np.cumsum([math.exp(dist.get(k, -math.inf)) for k in kids]) if kids else np.zeros(1)
            u = rng.random()
            if kids and u < cum[-1]:
                node = node + (kids[int(np.searchsorted(cum, u, side="right"))],)
                if node not in trie.children:
                    return node, trie.ends.get(node), self.vocab.text(node)
                if node not in rows:  # the parent showed it but its own distribution was not asked for
                    return node, None, self.vocab.text(node)
                continue
            if node in trie.ends:
                return node, trie.ends[node], self.vocab.text(node)
            rest = {i: v for i, v in dist.items() if i not in trie.children.get(node, ())}
            ids = sorted(rest)  # the local draw walks the vocabulary in id order: so does this one
            cdf = np.cumsum([math.exp(rest[i]) for i in ids]) if ids else np.zeros(0)
            v = rng.random()
            if len(cdf):
                total = 1.0 - (cum[-1] if kids else 0.0)
                j = int(np.searchsorted(cdf, v * total, side="right"))
                if j < len(ids):
                    return node + (ids[j],), None, self.vocab.text(node + (ids[j],))
            return node, None, self.vocab.text(node) + "\ufffd"
