"""Parse the logprob shapes OpenAI-compatible servers return into one normal form (pure, no I/O).

Shapes (see ../shared/reference/servers.md): the chat shape `logprobs.content[...]` (OpenAI chat, llama-server
on both routes, llama-cpp-python chat), the legacy completions shape `{tokens, token_logprobs, top_logprobs:
[{text: logprob}]}` (OpenAI, vLLM, llama-cpp-python), and llama.cpp's native `completion_probabilities`
(`top_logprobs`, post-sampling `top_probs`, and the pre-Dec-2024 `probs: [{tok_str, prob}]`).
Tokens are keyed by id where the server sends ids, else by bytes, else by text (flagged: text keys collapse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

SENTINEL = -9999.0  # at or below this a logprob means "not known" (OpenAI -9999, llama.cpp about -3.4e38)
POSITIVE_TOLERANCE = 1e-6  # a logprob above this is impossible (p > 1) and flagged
NO_FLAGS: tuple[str, ...] = ()


class NoLogprobs(Exception):
    """The response carries no logprobs where they were asked for."""


class Malformed(Exception):
    """The response is not a shape deval understands."""


class Alt(NamedTuple):
    """One visible candidate at a position: key identifies the token (id:, b: or t: prefix). A named tuple, not a
    dataclass: a response holds hundreds of them and a tuple is built several times faster."""

    key: str
    raw: bytes
    logprob: float  # -inf when the server gave a sentinel or null


@dataclass(frozen=True)
class Token:
    """One generated token: what was sampled and the candidates the server showed at that position."""

    key: str
    raw: bytes
    logprob: float
    top: tuple[Alt, ...]
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Choice:
    """One generated sequence with per-token logprobs."""

    text: str
    tokens: tuple[Token, ...]
    finish_reason: str | None
    keyed_by: str  # "id", "bytes" or "text"


def clean_logprob(value) -> tuple[float, tuple[str, ...]]:
    """A server logprob as a float: sentinels and null become -inf, a positive value is clamped to 0 and flagged."""
    if type(value) is float and SENTINEL < value <= 0.0:  # the usual case, first (NaN fails the comparison)
        return value, NO_FLAGS
    if value is None:
        return -math.inf, ("null-logprob",)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Malformed(f"logprob {value!r} is not a number")
    value = float(value)
    if math.isnan(value):
        return -math.inf, ("null-logprob",)
    if value <= SENTINEL:
        return -math.inf, ("sentinel-logprob",)
    if value > POSITIVE_TOLERANCE:
        return 0.0, ("positive-logprob",)
    return min(value, 0.0), ()


def _prob_to_logprob(value) -> tuple[float, tuple[str, ...]]:
    if value is None:
        return -math.inf, ("null-logprob",)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Malformed(f"probability {value!r} is not a number")
    if value > 1.0 + POSITIVE_TOLERANCE:
        return 0.0, ("positive-logprob",)
    return (math.log(value) if value > 0 else -math.inf), ()


def _key(entry: dict, text_field: str = "token") -> tuple[str, bytes, str]:
    """(key, raw bytes, keyed_by) of a token entry: id if present, else bytes, else text."""
    raw_bytes = entry.get("bytes")
    token_id = entry.get("id")
    if type(token_id) is int and type(raw_bytes) is list:  # llama.cpp's shape, the usual case, first
        try:
            return f"id:{token_id}", bytes(raw_bytes), "id"
        except (TypeError, ValueError):
            raise Malformed(f"token bytes {raw_bytes!r} are not a list of bytes") from None
    if raw_bytes is not None:
        try:  # bytes() itself refuses anything but integers in 0..255
            raw = bytes(raw_bytes) if isinstance(raw_bytes, list) else None
        except (TypeError, ValueError):
            raw = None
        if raw is None:
            raise Malformed(f"token bytes {raw_bytes!r} are not a list of bytes")
    else:
        text = entry.get(text_field)
        if not isinstance(text, str):
            raise Malformed(f"token entry without text or bytes: {entry!r}")
        raw = text.encode("utf-8")
    if type(token_id) is int:  # JSON gives int or bool; a bool is no id
        return f"id:{token_id}", raw, "id"
    if raw_bytes is not None:
        return "b:" + raw.hex(), raw, "bytes"
    return "t:" + text, raw, "text"


def _dedupe(alts: list[Alt]) -> tuple[Alt, ...]:
    """Drop repeats of the same token (same key); keep the first occurrence."""
    seen: dict[str, Alt] = {}
    for a in alts:
        seen.setdefault(a.key, a)
    return tuple(seen.values())


def _chat_token(entry: dict, prob_keys: bool = False) -> tuple[Token, str]:
    if not isinstance(entry, dict):
        raise Malformed(f"logprobs entry {entry!r} is not an object")
    key, raw, keyed_by = _key(entry)
    value = _prob_to_logprob if prob_keys else clean_logprob
    field = "prob" if prob_keys else "logprob"
    lp, flags = value(entry.get(field))
    tops = entry.get("top_probs" if prob_keys else "top_logprobs")
    if tops is None:
        tops = []
    if not isinstance(tops, list):
        raise Malformed("top_logprobs is not a list")
    alts: dict[str, Alt] = {}  # the first of repeats of the same token (same key)
    for t in tops:
        if not prob_keys and type(t) is dict:  # llama.cpp's shape with a plain logprob, the usual case, inline
            i, b, v = t.get("id"), t.get("bytes"), t.get("logprob")
            if type(i) is int and type(b) is list and type(v) is float and SENTINEL < v <= 0.0:
                k = f"id:{i}"
                if k not in alts:
                    try:
                        alts[k] = Alt(k, bytes(b), v)
                    except (TypeError, ValueError):
                        raise Malformed(f"token bytes {b!r} are not a list of bytes") from None
                continue
        if not isinstance(t, dict):
            raise Malformed(f"top_logprobs entry {t!r} is not an object")
        k, r, _ = _key(t)
        v, f = value(t.get(field))
        if f:
            flags += f
        if k not in alts:
            alts[k] = Alt(k, r, v)
    return Token(key, raw, lp, tuple(alts.values()), tuple(dict.fromkeys(flags)) if flags else NO_FLAGS), keyed_by


def _old_probs_token(entry: dict) -> tuple[Token, str]:
    """Pre-Dec-2024 llama.cpp: {content, probs: [{tok_str, prob}]}; the sampled token is `content`."""
    text = entry.get("content")
    if not isinstance(text, str):
        raise Malformed("completion_probabilities entry without content")
    flags: list[str] = []
    alts = []
    for p in entry.get("probs") or []:
        if not isinstance(p, dict) or not isinstance(p.get("tok_str"), str):
            raise Malformed(f"probs entry {p!r} has no tok_str")
        v, f = _prob_to_logprob(p.get("prob"))
        flags += f
        alts.append(Alt("t:" + p["tok_str"], p["tok_str"].encode(), v))
    own = next((a.logprob for a in alts if a.key == "t:" + text), -math.inf)
    return Token("t:" + text, text.encode(), own, _dedupe(alts), tuple(dict.fromkeys(flags))), "text"


def _legacy_tokens(lp: dict) -> tuple[list[Token], str]:
    tokens, values = lp.get("tokens"), lp.get("token_logprobs")
    tops = lp.get("top_logprobs") or [None] * len(tokens or [])
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        raise Malformed("legacy logprobs: tokens and token_logprobs missing or of different lengths")
    if not isinstance(tops, list) or len(tops) != len(tokens):
        raise Malformed("legacy logprobs: top_logprobs does not match tokens")
    out = []
    for text, value, top in zip(tokens, values, tops):
        if not isinstance(text, str):
            raise Malformed(f"legacy token {text!r} is not a string")
        lp_value, flags = clean_logprob(value)
        flags = list(flags)
        alts = []
        if top is not None:
            if not isinstance(top, dict):
                raise Malformed("legacy top_logprobs entry is not an object")
            for t, v in top.items():
                cleaned, f = clean_logprob(v)
                flags += f
                alts.append(Alt("t:" + t, t.encode(), cleaned))
        out.append(Token("t:" + text, text.encode(), lp_value, _dedupe(alts), tuple(dict.fromkeys(flags))))
    return out, "text"


def _choice_text(choice: dict) -> str:
    message = choice.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def parse_choice(choice: dict) -> Choice:
    """One `choices[i]` object of a chat or completions response."""
    if not isinstance(choice, dict):
        raise Malformed("a choice is not an object")
    lp = choice.get("logprobs")
    if lp is None:
        raise NoLogprobs("the response has no logprobs")
    if not isinstance(lp, dict):
        raise Malformed("logprobs is not an object")
    if "content" in lp:
        content = lp["content"]
        if content is None:
            raise NoLogprobs("logprobs.content is null")
        if not isinstance(content, list):
            raise Malformed("logprobs.content is not a list")
        parsed = [_chat_token(e) for e in content]
        tokens = [t for t, _ in parsed]
        keyed = {k for _, k in parsed}
    elif "tokens" in lp:
        tokens, k = _legacy_tokens(lp)
        keyed = {k}
    else:
        raise NoLogprobs("logprobs has neither content nor tokens")
    keyed_by = "text" if "text" in keyed or not keyed else ("bytes" if "bytes" in keyed else "id")
    return Choice(_choice_text(choice), tuple(tokens), choice.get("finish_reason"), keyed_by)


def parse_native(body: dict) -> Choice:
    """llama.cpp's native /completion response (`completion_probabilities`), any of its three shapes."""
    entries = body.get("completion_probabilities")
    if entries is None:
        raise NoLogprobs("no completion_probabilities (pass n_probs)")
    if not isinstance(entries, list):
        raise Malformed("completion_probabilities is not a list")
    tokens, keyed = [], set()
    for e in entries:
        if not isinstance(e, dict):
            raise Malformed("completion_probabilities entry is not an object")
        if "probs" in e:
            t, k = _old_probs_token(e)
        else:
            t, k = _chat_token(e, prob_keys="top_probs" in e)
        tokens.append(t)
        keyed.add(k)
    keyed_by = "text" if "text" in keyed or not keyed else ("bytes" if "bytes" in keyed else "id")
    content = body.get("content")
    return Choice(content if isinstance(content, str) else "", tuple(tokens), body.get("stop_type"), keyed_by)


def parse_response(body) -> list[Choice]:
    """Every choice of a response, ordered by index; raises NoLogprobs or Malformed."""
    if not isinstance(body, dict):
        raise Malformed("the response is not a JSON object")
    if "completion_probabilities" in body:
        return [parse_native(body)]
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise Malformed("the response has no choices")
    ordered = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    return [parse_choice(c) for c in ordered]
