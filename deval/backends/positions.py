"""From a generated token sequence to item positions and p_t(item) from each position's top-k (pure).

An item position is the token where an item (or an off-set answer in its place) starts; the text there is the
model's result. p_t(x) sums the probabilities of every visible token that spells x ("7", " 7", ",7"): tokens
are compared by their bytes with surrounding whitespace and separators stripped, never by one decoded string.
Over HTTP only the first token of a multi-token item is visible: such items are listed as missing and flagged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from deval.core.sampling import Filters
from deval.backends.logprobs import Choice, Token
from deval.core.sampling import sampling_logprobs

WHITESPACE = b" \t\r\n"
SUM_TOLERANCE = 1e-4  # visible mass above 1 + this is flagged
MAX_TAIL_TOKENS = 100_000  # cap on the modelled tail's token count (see modelled_tail)


@dataclass(frozen=True)
class Position:
    """One item position: the token index where it starts, the field text, the item index or None (off-set)."""

    token: int
    text: str
    item: int | None


@dataclass(frozen=True)
class View:
    """p_t over the items at one position, with what could not be seen."""

    probs: tuple[float, ...]
    tail: float
    tail_cap: float
    missing: tuple[int, ...]
    flags: tuple[str, ...]


def _strip(raw: bytes, sep: bytes) -> bytes:
    return raw.strip(WHITESPACE + sep)


def _token_offsets(tokens: tuple[Token, ...]) -> tuple[bytes, list[int]]:
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t.raw)
    return b"".join(t.raw for t in tokens), offsets


def _token_at(offsets: list[int], byte: int) -> int:
    lo, hi = 0, len(offsets) - 1
    while lo < hi:  # last token starting at or before `byte`
        mid = (lo + hi + 1) // 2
        if offsets[mid] <= byte:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _fields(text: bytes, sep: bytes, spaces: bool = False) -> list[tuple[int, int]]:
    """(start, end) of each non-blank field between separators or newlines (or any whitespace), trimmed."""
    out, start = [], 0
    breaks = [re.escape(sep)] if sep else []
    breaks.append(rb"\s+" if spaces else b"\n")
    pattern = re.compile(b"|".join(breaks))
    for m in list(pattern.finditer(text)) + [None]:
        end = m.start() if m else len(text)
        s, e = start, end
        while s < e and text[s] in WHITESPACE:
            s += 1
        while e > s and text[e - 1] in WHITESPACE:
            e -= 1
        if e > s:
            out.append((s, e))
        start = m.end() if m else len(text)
    return out


def find_positions(choice: Choice, items: tuple[str, ...], separator: str, limit: int) -> tuple[list[Position], tuple[str, ...]]:
    """Item positions in a generated sequence (at most `limit`), and flags about the walk.

    Fields are split at the separator and newlines, and at any whitespace when no item contains whitespace.
    Fields before the first item are a preamble (skipped, flagged); a preamble's last word may be the first item
    ("Here they are: 2"). After that every field is a position, an item or off-set. A field cut off by the
    length limit at the very end is dropped: it may be an unfinished item.
    """
    text, offsets = _token_offsets(choice.tokens)
    flags = []
    if not choice.tokens:
        return [], ("no-tokens",)
    if choice.text and text.decode("utf-8", "replace") != choice.text:
        flags.append("text-mismatch")
    sep = separator.encode()
    encoded = [x.encode() for x in items]
    index = {x: i for i, x in enumerate(encoded)}
    spaces = not any(ch.isspace() for x in items for ch in x)  # "1 2 3" is a sequence too, unless items have spaces
    fields = _fields(text, sep, spaces)
    if fields and choice.finish_reason == "length" and fields[-1][1] == len(text.rstrip(WHITESPACE)):
        fields = fields[:-1]
    alternation = b"|".join(re.escape(x) for x in sorted(encoded, key=len, reverse=True))
    tail_item = re.compile(rb"(?:^|[\s:])(" + alternation + rb")\.?$")
    positions: list[Position] = []
    for n, (s, e) in enumerate(fields):
        if len(positions) >= limit:
            break
        field = text[s:e]
        last = n == len(fields) - 1
        item = index.get(field, index.get(field[:-1]) if last and field.endswith(b".") else None)
        if not positions and item is None:
            flags.append("preamble")
            m = tail_item.search(field)
            if m is None:
                continue
            s, item = s + m.start(1), index[m.group(1)]
        positions.append(Position(_token_at(offsets, s), text[s:e].decode("utf-8", "replace"), item))
    return positions, tuple(dict.fromkeys(flags))


def first_answer_position(choice: Choice, items: tuple[str, ...]) -> Position | None:
    """Independent mode: the answer starts at the first non-blank token; its text (less a final '.') is the result."""
    text, offsets = _token_offsets(choice.tokens)
    stripped = text.strip(WHITESPACE)
    if not stripped:
        return None
    start = len(text) - len(text.lstrip(WHITESPACE))
    answer = stripped[:-1] if stripped.endswith(b".") else stripped
    index = {x.encode(): i for i, x in enumerate(items)}
    return Position(_token_at(offsets, start), stripped.decode("utf-8", "replace"), index.get(answer))


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
              filters: Filters = Filters(), raw: bool = False) -> View:
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
    sep = separator.encode()
    spelled = [_strip(r, sep) for r in raws]
    probs, missing = [], []
    for i, item in enumerate(items):
        target = item.encode()
        hits = [j for j, s in enumerate(spelled) if s == target]
        probs.append(float(sum(visible_p[j] for j in hits)))
        if not hits:
            missing.append(i)
            if any(s and target.startswith(s) for s in spelled):
                flags.append(f"first-token-only:{item}")
    if missing:
        flags.append("missing-items")
    return View(tuple(probs), tail, cap, tuple(missing), tuple(dict.fromkeys(flags)))
