"""llama.cpp's native `/completion` route: the next-token distribution at a token-id prefix, up to the whole
vocabulary (`n_probs`), read lean (issue 11).

The route sits at the server root, outside /v1: `http://HOST:PORT/v1` -> `http://HOST:PORT/completion`. With
`n_probs` at the vocabulary size the answer holds every token's pre-sampling log-softmax (about 4.7 MB of JSON for
SmolLM2's 49152 tokens): only ids and logprobs are read, and the response cache keeps them packed (float32 in id
order where the row is whole, which is how the server computes them), not the server's JSON.
"""

from __future__ import annotations

import base64
import json
import math
import urllib.parse

import numpy as np

from deval.backends.logprobs import SENTINEL, Malformed, NoLogprobs

ROUTE = "native"  # the route's name in request keys, errors and the manifest
LABEL_EXACT = "native /completion (exact)"
PACKED = "deval-native-row"  # the cache record's marker
LEAN = "deval-native-lean"  # parse()'s answer: ids and logprobs read straight from the body
FLOAT32_EPS = 2.0**-24  # unit roundoff of float32: llama.cpp's softmax sum is off by at most vocab times this


def completion_url(base_url: str) -> str:
    """The native route's absolute URL: the base URL's path without its /v1 (and its query kept)."""
    parts = urllib.parse.urlsplit(base_url)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urllib.parse.urlunsplit(parts._replace(path=path + "/completion", fragment=""))


FORCE_BIAS = 1e4  # logit bias that makes the server's own draw its end-of-text token


def body(prompt, n_probs: int, seed: int, sampling: dict | None = None, eos: int | None = None,
         slot: int | None = None, cold: bool = False) -> dict:
    """One token's distribution at a prompt (token ids or text): pre-sampling values, no post-sampling probs.

    With eos, the server's own (unused) draw is forced to end-of-text by logit_bias: llama-server drops the
    probabilities of a drawn token whose text is incomplete UTF-8 (a lead byte), and reports values before the
    bias (fixtures/llama-server/native-eos.json), so the row stays the model's."""
    out = {"prompt": prompt, "n_predict": 1, "n_probs": int(n_probs), "temperature": 1.0, "seed": int(seed),
           "post_sampling_probs": False} | dict(sampling or {})
    if eos is not None:
        out["logit_bias"] = [[int(eos), FORCE_BIAS]]
    if slot is not None:
        out["id_slot"] = int(slot)
    if cold:
        out["cache_prompt"] = False
    return out


TOP = b'"top_logprobs":['
ENTRY = b'{"id":'
VALUE = b'"logprob":'


def parse(raw: bytes) -> dict:
    """A native answer read lean where it holds one position's top list: {LEAN: (ids, logprobs)}; else json.loads.

    A whole-vocabulary answer is 4.7 MB of small JSON objects (id, token, bytes, logprob): json.loads takes 0.2-0.35 s
    here, this a fraction of it. The markers cannot occur inside a JSON string (its quotes would be escaped); an
    entry of another shape (a field after logprob, no id first) falls back to json.loads."""
    head, found, rest = raw.partition(TOP)
    if not found or TOP in rest or b'"completion_probabilities":[' not in head:
        return json.loads(raw)
    pieces = rest.split(ENTRY)
    if pieces[0].strip():  # the list does not open with an entry
        return json.loads(raw)
    pieces = pieces[1:]
    try:
        ids = np.fromiter((int(p[: p.index(b",")]) for p in pieces), dtype=np.int64, count=len(pieces))
        lps = np.fromiter((float(p[(at := p.index(VALUE) + len(VALUE)): p.index(b"}", at)]) for p in pieces),
                          dtype=np.float64, count=len(pieces))
    except ValueError:
        return json.loads(raw)
    lps[lps <= SENTINEL] = -np.inf
    return {LEAN: (ids, lps)}


def read_row(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, logprobs) of the first position's top list; sentinels (about -3.4e38) read as -inf."""
    if not isinstance(data, dict):
        raise Malformed("the native answer is not a JSON object")
    if data.get(PACKED):
        return unpack(data)
    if LEAN in data:
        if not len(data[LEAN][0]):
            raise NoLogprobs("the native answer has an empty top_logprobs")
        return data[LEAN]
    entries = data.get("completion_probabilities")
    if not entries:
        raise NoLogprobs("no completion_probabilities (the server ignored n_probs, or generated nothing)")
    first = entries[0]
    top = first.get("top_logprobs") if isinstance(first, dict) else None
    if not isinstance(top, list) or not top:
        raise NoLogprobs("the native answer has no top_logprobs (post_sampling_probs or an old build)")
    try:
        ids = np.fromiter((e["id"] for e in top), dtype=np.int64, count=len(top))
        lps = np.fromiter((e["logprob"] for e in top), dtype=np.float64, count=len(top))
    except (KeyError, TypeError, ValueError):
        raise Malformed("a native top_logprobs entry lacks an integer id or a numeric logprob") from None
    lps[lps <= SENTINEL] = -np.inf
    return ids, lps


def drawn(data: dict, eos: int) -> int | None:
    """The token the server drew itself (return_tokens, else the first position's id; end of text where it
    stopped there with nothing generated), or None where the answer does not say."""
    if data.get("tokens"):
        return int(data["tokens"][0])
    entries = data.get("completion_probabilities") or [{}]
    if isinstance(entries[0], dict) and isinstance(entries[0].get("id"), int):
        return entries[0]["id"]
    return eos if data.get("stop_type") == "eos" else None


def pack(ids: np.ndarray, lps: np.ndarray, vocab: int) -> bytes:
    """A row as a compact cache record: logprobs in id order (float32 where that is lossless, as llama.cpp's
    values are), and the ids where the row is not the whole vocabulary."""
    record: dict = {PACKED: 1, "vocab": int(vocab)}
    order = np.argsort(ids, kind="stable")
    ids, lps = ids[order], lps[order]
    if len(ids) != vocab or not np.array_equal(ids, np.arange(vocab)):
        record["ids"] = base64.b64encode(ids.astype("<i4").tobytes()).decode()
    kind = "<f4" if np.array_equal(lps.astype(np.float32).astype(np.float64), lps) else "<f8"  # llama.cpp: float32
    record["dtype"] = kind
    record["lp"] = base64.b64encode(lps.astype(kind).tobytes()).decode()
    return json.dumps(record, separators=(",", ":")).encode()


def unpack(record: dict) -> tuple[np.ndarray, np.ndarray]:
    lps = np.frombuffer(base64.b64decode(record["lp"]), dtype=record.get("dtype", "<f8")).astype(np.float64)
    ids = (np.frombuffer(base64.b64decode(record["ids"]), dtype="<i4").astype(np.int64) if "ids" in record
           else np.arange(len(lps), dtype=np.int64))
    return ids, lps


def decided_draw(seen: dict[int, float], u: float, vocab: int, given: float | None = None) -> int | None:
    """The token core.sampling.draw takes with uniform u from a row of which only `seen` (the top-k) is known, where
    every placement of the unseen mass gives the same token; None where it could differ. The unseen mass is at most
    (vocab - k) times the k-th probability, and at most 1 less the seen mass (with the float32 normalisation's
    error), or `given` where the caller knows it. Sums are relative to the largest probability, as draw's are."""
    if not seen:
        return None
    ids = np.fromiter(seen, dtype=np.int64, count=len(seen))
    values = np.fromiter(seen.values(), dtype=np.float64, count=len(seen))
    order = np.argsort(ids, kind="stable")
    ids, values = ids[order], values[order]
    weights = np.exp(values - values.max())
    cdf = np.cumsum(weights)
    if given is not None:  # the caller's bound, relative to the largest probability as the sums are
        unseen = given * math.exp(-float(values.max()))
    else:
        unseen = (vocab - len(ids)) * float(weights.min())  # no unseen token is likelier than the k-th
        # the values are log-softmax over the whole vocabulary, normalised by a float32 sum (error <= vocab 2^-24):
        # the whole row's weights sum to at most exp(-max) (1 + vocab 2^-24), the unseen ones to that less the seen
        whole = math.exp(-float(values.max())) * (1 + vocab * FLOAT32_EPS)
        unseen = min(unseen, max(whole - float(cdf[-1]), 0.0)) * (1 + 1e-9) + 1e-12
    low, high = u * cdf[-1], u * (cdf[-1] + unseen)  # where u times the whole row's sum can lie
    j = int(np.searchsorted(cdf, high, side="right"))  # the first visible token past it wherever the tail lies
    if j >= len(ids):
        return None
    before = cdf[j - 1] if j else 0.0
    return int(ids[j]) if before + unseen <= low else None
