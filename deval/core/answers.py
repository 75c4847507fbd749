"""The item-position protocol (docs/protocol.md): from a generated token stream to item positions, one pure
function every backend calls, so every backend measures the same positions.

A field is the text between breaks (the task's separator, a newline, and any whitespace when no item contains
whitespace). Fields before the first one that matches an item are a preamble (skipped; a preamble's last word may
be the first item: "Here they are: 2"). From there every field is an item position, an item or off-set, until
the answer ends: at `limit` positions, at a blank line, after a field that ends a sentence with a full stop, or at
the end of the stream. The position's token is the token holding the field's first non-blank byte; P_token there
is the model's distribution at that token, restricted to the item spellings the same matching rule accepts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

WHITESPACE = b" \t\r\n"
# Our choice: characters stripped around a field (and a token) before it is compared with an item.
DEFAULT_STRIP = ".,;:!?\"'`*()[]{}"
BLANK_LINE = re.compile(rb"\n[ \t\r]*\n")
PREAMBLE_TOKENS = 48  # generation budget for a preamble, on top of the answer itself
TOKENS_PER_ITEM_SLACK = 3  # separator, space and one spare token per item
DEFAULT_CUE = "Answer:"  # our default completion cue: the answer is started for the model


@dataclass(frozen=True)
class Matching:
    """How a field (or a token) is compared with the items: case, and the characters stripped around it."""

    case: bool = False  # True: case-sensitive
    strip: str = DEFAULT_STRIP

    def to_dict(self) -> dict:
        return {"case": self.case, "strip": self.strip}


@dataclass(frozen=True)
class Matcher:
    """Items under a matching rule: the key of any text, and the item it spells (None off the set)."""

    items: tuple[str, ...]
    separator: str = ","
    matching: Matching = Matching()

    def key(self, raw: bytes) -> bytes:
        stripped = raw.strip(WHITESPACE + self.separator.encode() + self.matching.strip.encode())
        return stripped if self.matching.case else stripped.lower()

    @cached_property
    def keys(self) -> dict[bytes, int]:
        return {self.key(x.encode()): i for i, x in enumerate(self.items)}

    def item(self, raw: bytes) -> int | None:
        """The item this text spells under the rule, or None."""
        return self.keys.get(self.key(raw)) if raw.strip(WHITESPACE) else None

    def spellings(self) -> list[tuple[str, int]]:
        """Texts that spell each item (the item, its lower and capitalised forms unless case-sensitive), bare and
        after one space: what an exact backend tokenises into its item trie (any other single token that spells an
        item, "RED" say, is found by scanning the vocabulary)."""
        out = []
        for i, x in enumerate(self.items):
            forms = [x] if self.matching.case else list(dict.fromkeys([x, x.lower(), x.capitalize()]))
            out += [(lead + f, i) for f in forms for lead in ("", " ")]
        return out


@dataclass(frozen=True)
class Position:
    """One item position: the token index where it starts, the field text, the item index or None (off-set)."""

    token: int
    text: str
    item: int | None


@dataclass(frozen=True)
class Answer:
    """The positions found in a token stream, whether the answer has ended, and flags about the walk."""

    positions: tuple[Position, ...]
    ended: bool
    flags: tuple[str, ...]


def _offsets(pieces: Sequence[bytes]) -> tuple[bytes, list[int]]:
    offsets, pos = [], 0
    for p in pieces:
        offsets.append(pos)
        pos += len(p)
    return b"".join(pieces), offsets


def _token_at(offsets: list[int], byte: int) -> int:
    lo, hi = 0, len(offsets) - 1
    while lo < hi:  # last token starting at or before `byte`
        mid = (lo + hi + 1) // 2
        if offsets[mid] <= byte:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _fields(text: bytes, sep: bytes, spaces: bool) -> list[tuple[int, int, bool]]:
    """(start, end, closed) of each non-blank field, trimmed; closed: a break follows it (it cannot grow)."""
    breaks = [re.escape(sep)] if sep else []
    breaks.append(rb"\s+" if spaces else b"\n")
    out, start = [], 0
    for m in list(re.finditer(b"|".join(breaks), text)) + [None]:
        end = m.start() if m else len(text)
        s, e = start, end
        while s < e and text[s] in WHITESPACE:
            s += 1
        while e > s and text[e - 1] in WHITESPACE:
            e -= 1
        if e > s:
            out.append((s, e, m is not None))
        start = m.end() if m else len(text)
    return out


def find_positions(pieces: Sequence[bytes], matcher: Matcher, limit: int, cut: bool = False) -> Answer:
    """Item positions in a token stream (each token's bytes), at most `limit`.

    `cut`: the stream may go on (still generating, or stopped by a length limit): a field that touches the end of
    the stream may be unfinished and is left out. With no item anywhere, the first field is one off-set position
    (flag no-items-found), so a model that ignores the format still counts as measured and failed.
    """
    if not pieces:
        return Answer((), not cut, ("no-tokens",))
    text, offsets = _offsets(pieces)
    sep = matcher.separator.encode()
    spaces = not any(ch.isspace() for x in matcher.items for ch in x)
    fields = _fields(text, sep, spaces)
    if cut and fields and not fields[-1][2]:
        fields = fields[:-1]
    keys = matcher.keys
    words = re.compile(rb"[^\s:]+")
    positions: list[Position] = []
    flags: list[str] = []
    ended = False
    answer_start = None
    for s, e, _ in fields:
        if len(positions) >= limit:
            ended = True
            break
        if answer_start is not None and BLANK_LINE.search(text, answer_start, s):
            ended = True
            flags.append("trailer")
            break
        item = matcher.item(text[s:e])
        if not positions and item is None:
            last = ([m for m in words.finditer(text, s, e)] or [None])[-1]
            if last is None or keys.get(matcher.key(last.group())) is None:
                flags.append("preamble")
                continue
            s, item = last.start(), keys[matcher.key(last.group())]
        positions.append(Position(_token_at(offsets, s), text[s:e].decode("utf-8", "replace"), item))
        answer_start = e
        if text[s:e].endswith(b".") and item is not None:
            ended = True  # "..., 3." ends the answer
            break
    else:
        ended = (not cut or len(positions) >= limit
                 or (answer_start is not None and BLANK_LINE.search(text, answer_start) is not None))
    if not positions and not cut and fields:
        s, e, _ = fields[0]
        positions.append(Position(_token_at(offsets, s), text[s:e].decode("utf-8", "replace"), None))
        flags = [f for f in flags if f != "preamble"] + ["no-items-found"]
    return Answer(tuple(positions), ended, tuple(dict.fromkeys(flags)))


def answer_budget(items: Sequence[str], steps: int) -> int:
    """Tokens a generation may take for `steps` items (the same on every backend)."""
    per_item = max(len(x) for x in items) + TOKENS_PER_ITEM_SLACK
    return steps * per_item + PREAMBLE_TOKENS


def completion_prompt(prompt: str, cue: str) -> str:
    """A base model's prompt: the task's prompt, a blank line, and the cue where the first item should follow."""
    return f"{prompt}\n\n{cue}" if cue else f"{prompt}\n"
