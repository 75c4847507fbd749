"""From a generated token sequence to item positions and p_t(item) from each position's top-k (pure).

Item positions come from the protocol's one function (deval.core.answers.find_positions, docs/protocol.md), the
same the local backend calls. p_t(x) sums the probabilities of every visible token that spells x ("7", " 7",
",7", "Heads"): tokens are compared by their bytes under the task's matching rule, never by one decoded string.
Over HTTP only the first token of a multi-token item is visible: such items are listed as missing and flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deval.backends.logprobs import Choice, Token
from deval.core.answers import Matcher, Matching, Position
from deval.core.answers import find_positions as core_positions
from deval.core.sampling import Filters, sampling_logprobs

WHITESPACE = b" \t\r\n"
SUM_TOLERANCE = 1e-4  # visible mass above 1 + this is flagged
MAX_TAIL_TOKENS = 100_000  # cap on the modelled tail's token count (see modelled_tail)


@dataclass(frozen=True)
class View:
    """p_t over the items at one position, with what could not be seen."""

    probs: tuple[float, ...]
    tail: float
    tail_cap: float
    missing: tuple[int, ...]
    flags: tuple[str, ...]


def find_positions(choice: Choice, items: tuple[str, ...], separator: str, limit: int,
                   matching: Matching = Matching()) -> tuple[list[Position], tuple[str, ...]]:
    """Item positions in a generated sequence (at most `limit`) and flags: the protocol's one function
    (deval.core.answers.find_positions) over the choice's token bytes; a length-limited choice may end mid-field."""
    if not choice.tokens:
        return [], ("no-tokens",)
    pieces = [t.raw for t in choice.tokens]
    answer = core_positions(pieces, Matcher(tuple(items), separator, matching), limit,
                            cut=choice.finish_reason == "length")
    flags = answer.flags
    if choice.text and b"".join(pieces).decode("utf-8", "replace") != choice.text:
        flags = ("text-mismatch",) + flags
    return list(answer.positions), flags


def first_answer_position(choice: Choice, items: tuple[str, ...], separator: str = ",",
                          matching: Matching = Matching()) -> Position | None:
    """Independent mode: the first position of the answer under the same protocol (limit 1)."""
    positions, _ = find_positions(choice, items, separator, 1, matching)
    return positions[0] if positions else None


def visible(token: Token) -> dict[str, tuple[bytes, float]]:
    """The distinct tokens whose probability is known at this position: the top-k plus the sampled token."""
    seen = {a.key: (a.raw, a.logprob) for a in token.top if math.isfinite(a.logprob)}
    if math.isfinite(token.logprob):
        seen.setdefault(token.key, (token.raw, token.logprob))
    return seen


def modelled_tail(logprobs: np.ndarray, tail: float, cap: float) -> np.ndarray:
    """The visible log-probabilities completed by the unseen tail as equal tokens no larger than `cap`.

    Our assumption (documented in the README): the tail is split into ceil(tail / cap) equal tokens. It is the
    only completion that needs no knowledge of the vocabulary; any other split is as consistent with the data.
    """
    if tail <= 0 or cap <= 0:
        return logprobs
    n = min(int(math.ceil(tail / cap - 1e-9)), MAX_TAIL_TOKENS)
    return np.concatenate([logprobs, np.full(n, math.log(tail / n))])


def item_view(token: Token, items: tuple[str, ...], separator: str, temperature: float = 1.0,
              filters: Filters = Filters(), raw: bool = False, matching: Matching = Matching()) -> View:
    """p_t(item) at one position from the visible top-k.

    With raw (pre-temperature) server logprobs and temperature != 1 or active filters, the distribution the
    sampler draws from is computed here: the tail is modelled (see modelled_tail), then deval's own
    temperature and filter chain (deval.core.sampling) is applied, and the tail's share after it is recorded.
    """
    flags = list(token.flags)
    seen = visible(token)
    raws = [r for r, _ in seen.values()]
    lps = np.array([lp for _, lp in seen.values()], dtype=float)
    mass = float(np.exp(lps).sum()) if len(lps) else 0.0
    if mass > 1.0 + SUM_TOLERANCE:
        flags.append("topk-sum-above-1")
    tail = max(0.0, 1.0 - mass)
    # no unseen token outranks the smallest of the returned top-k; the sampled token may lie outside the top-k
    # (it counts as visible mass) but says nothing about what else is unseen, so it does not set the cap
    top = [a.logprob for a in token.top if math.isfinite(a.logprob)]
    cap = min(tail, math.exp(min(top))) if top else tail
    if raw and (temperature != 1.0 or filters.active) and len(lps):
        full = modelled_tail(lps, tail, cap)
        with np.errstate(divide="ignore"):
            sampled = sampling_logprobs(full, temperature, filters)
        probs_all = np.exp(sampled)
        extra = probs_all[len(lps):]
        tail = float(extra.sum())
        cap = float(extra.max()) if len(extra) else 0.0
        visible_p = probs_all[: len(lps)]
        if len(extra):
            flags.append("tail-modelled")
    else:
        visible_p = np.exp(lps) if len(lps) else np.zeros(0)
        if mass > 1.0 and len(lps):
            visible_p = visible_p / mass
    matcher = Matcher(tuple(items), separator, matching)
    spelled = [matcher.key(r) for r in raws]
    probs, missing = [], []
    for i, item in enumerate(items):
        target = matcher.key(item.encode())
        hits = [j for j, s in enumerate(spelled) if s == target]
        probs.append(float(sum(visible_p[j] for j in hits)))
        if not hits:
            missing.append(i)
            if any(s and target.startswith(s) for s in spelled):
                flags.append(f"first-token-only:{item}")
    if missing:
        flags.append("missing-items")
    return View(tuple(probs), tail, cap, tuple(missing), tuple(dict.fromkeys(flags)))
