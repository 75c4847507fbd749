"""Exact next-token models and valid-token sets: a byte trie over the members of a valid set, queried per token."""

from __future__ import annotations

import bisect
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

# Our reconstruction: an answer ends at an end-of-generation token (EOS, end of turn: the model's own list), a
# whitespace token holding a newline, or a full stop or comma, the separator (optionally followed by whitespace).
# Other tokens with no text (control tokens, thousands in some vocabularies) do not end an answer. Leading spaces
# are allowed.
END_TEXTS = (b".", b",")
LEADS = (b"", b" ", b"  ")  # leading spaces a first token may carry
CACHE_SIZE = 256  # next-token distributions kept in memory (float64 over the vocabulary: ~0.4 MB each for 49k)


class ExactModel(Protocol):
    """A model that gives the exact next-token distribution over its whole vocabulary (the local backend)."""

    n_vocab: int

    def prompt_tokens(self, prompt: str) -> list[int]: ...

    def tokenize(self, text: str) -> list[int]: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def next_logprobs(self, tokens: Sequence[int]) -> np.ndarray: ...


class CachedModel:
    """Memoises next_logprobs by token prefix (LRU): samples and trie walks share most prefixes."""

    def __init__(self, model: ExactModel, size: int = CACHE_SIZE):
        self.model = model
        self.size = size
        self.calls = 0
        self._cache: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()

    def next_logprobs(self, tokens: Sequence[int]) -> np.ndarray:
        key = tuple(int(t) for t in tokens)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        self.calls += 1
        value = np.asarray(self.model.next_logprobs(key), dtype=np.float64)
        self._cache[key] = value
        if len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return value


def ends_answer(text: bytes) -> bool:
    """True for a token text that can follow a complete answer and end it: a newline or END_TEXTS."""
    return bool(text) and ((not text.strip() and b"\n" in text) or text.rstrip() in END_TEXTS)


def end_of_generation(model: ExactModel, pieces: Sequence[bytes]) -> set[int]:
    """The model's end-of-generation tokens (eog_tokens()); a model that does not say: its empty-text tokens."""
    if hasattr(model, "eog_tokens"):
        return set(int(t) for t in model.eog_tokens())
    return {i for i, b in enumerate(pieces) if b == b""}


class Vocab:
    """Every token's bytes, sorted for prefix lookups, and which tokens can end an answer."""

    def __init__(self, model: ExactModel):
        self.bytes = [bytes(model.token_bytes(i)) for i in range(model.n_vocab)]
        self.n = len(self.bytes)
        order = sorted(range(self.n), key=lambda i: self.bytes[i])
        self._sorted = [self.bytes[i] for i in order]
        self._ids = np.array(order, dtype=np.int64)
        eog = end_of_generation(model, self.bytes)
        self.ends = np.array([i in eog or ends_answer(b) for i, b in enumerate(self.bytes)])

    def with_prefix(self, prefix: bytes) -> np.ndarray:
        """Ids of tokens whose bytes start with `prefix` (non-empty prefix)."""
        lo = bisect.bisect_left(self._sorted, prefix)
        hi = bisect.bisect_left(self._sorted, prefix + b"\xff" * 8)
        return self._ids[lo:hi]

    def exactly(self, text: bytes) -> np.ndarray:
        lo = bisect.bisect_left(self._sorted, text)
        hi = bisect.bisect_right(self._sorted, text)
        return self._ids[lo:hi]


def max_answer_tokens(members: Sequence[str]) -> int:
    """No valid answer takes more tokens than this: every token carries at least one byte."""
    return max(len(m.encode("utf-8")) for m in members) + len(LEADS[-1]) + 1


@dataclass(frozen=True)
class Moves:
    """At one answer prefix: tokens that continue toward a member, and tokens that finish a member (-> which)."""

    extend: np.ndarray  # bool over the vocabulary
    finish: dict[int, str]  # token id -> the member it completes

    @property
    def valid(self) -> np.ndarray:
        mask = self.extend.copy()
        mask[list(self.finish)] = True
        return mask


class ValidityOracle:
    """Valid tokens after any answer prefix: a byte-level trie over the members, so every tokenisation counts."""

    def __init__(self, members: Sequence[str], vocab: Vocab):
        self.members = tuple(members)
        self.vocab = vocab
        self._encoded = [(m, m.encode("utf-8")) for m in self.members]
        self._cache: dict[bytes, Moves] = {}

    def moves(self, answer: bytes) -> Moves:
        if answer not in self._cache:
            self._cache[answer] = self._moves(answer)
        return self._cache[answer]

    def _moves(self, answer: bytes) -> Moves:
        v = self.vocab
        extend = np.zeros(v.n, dtype=bool)
        finish: dict[int, str] = {}
        core = answer.lstrip(b" ")
        # before the answer starts, tokens may carry leading spaces: at most len(LEADS[-1]) in all
        leads = tuple(lead for lead in LEADS if len(answer) + len(lead) <= len(LEADS[-1])) if not core else (b"",)
        if not core:
            for lead in leads[1:]:
                extend[v.exactly(lead)] = True
        for member, m in self._encoded:
            if not m.startswith(core):
                continue
            for lead in leads:
                rest = lead + m[len(core):]
                for i in range(len(lead) + 1, len(rest) + 1):
                    extend[v.exactly(rest[:i])] = True
                if rest:
                    for tok in v.with_prefix(rest):
                        if len(v.bytes[tok]) > len(rest) and ends_answer(v.bytes[tok][len(rest):]):
                            finish[int(tok)] = member
                else:
                    for tok in np.flatnonzero(v.ends):
                        finish[int(tok)] = member
        finish = {t: m for t, m in finish.items() if not extend[t]}  # a longer member keeps the answer going
        return Moves(extend=extend, finish=finish)


def sample_rng(seed: int, *key) -> np.random.Generator:
    """The generator for one sample, from the seed and the sample's key alone: samples draw in any order and resume."""
    spawn_key = tuple(zlib.crc32(str(k).encode("utf-8")) for k in key)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=spawn_key))


@dataclass(frozen=True)
class TaskSession:
    """One valid-set task on one exact model: the memoised model, the validity oracle and the prompt's tokens."""

    task: object  # a deval.core.validsets.ValidSetTask
    model: ExactModel
    cached: CachedModel
    oracle: ValidityOracle
    prompt: tuple[int, ...]
    max_tokens: int

    @classmethod
    def open(cls, task, model: ExactModel, vocab: Vocab | None = None) -> "TaskSession":
        return cls(task=task, model=model, cached=CachedModel(model),
                   oracle=ValidityOracle(task.members, vocab or Vocab(model)),
                   prompt=tuple(model.prompt_tokens(task.prompt)), max_tokens=max_answer_tokens(task.members))
