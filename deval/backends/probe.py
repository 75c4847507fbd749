"""Probe an endpoint: which sampler fields it takes, which routes give logprobs, the largest top-k, keys, raw or
processed, n, and whether a prompt can be continued. Answers are cached per (base URL, model, server); failures
never are."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from deval.backends.cache import endpoint_id
from deval.backends.http import Refused, Transient, Transport
from deval.backends.logprobs import Malformed, NoLogprobs, parse_response
from deval.backends.urls import redact
from deval.jsonio import dump_json

PROMPT = "Pick a random digit from 1 to 9. Answer with the digit only."
RAW_TOLERANCE = 0.02  # logprobs moving less than this between temperatures 1 and 0.5 are raw
COMPARED = 5  # likeliest tokens compared between the two temperatures
PROBE_SEED = 1234
SCHEMA = 3  # probe cache entries of another schema (older deval, before the native route) are ignored
FIRST_ASK = 20  # the top-k every server of servers.md serves
GROWTH = 10  # the top-k search asks 20, 200, 2000, ... until the server caps it
SEARCH_LIMIT = 1 << 20  # above any vocabulary: a count below the ask means the vocabulary (or a cap) was reached
EMPTY_ATTEMPTS = 3  # a 200 without logprobs is asked again this often before the route counts as without
FULL_MASS = 0.999  # a top-k holding this much mass is the full distribution
# neutral values of the llama.cpp / vLLM sampler extensions; tried on servers whose fields are not known
NEUTRAL_EXTENSIONS = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0, "repetition_penalty": 1.0}
TOP_K_OFF = (0, -1)  # "top_k off" is 0 for llama.cpp and llama-cpp-python, -1 for older vLLM


@dataclass(frozen=True)
class Capabilities:
    """What an endpoint supports, as probed (or as its preset claims when probing is off)."""

    chat: bool
    completions: bool
    top_logprobs: dict  # route -> largest top-k seen (0: no logprobs)
    keyed_by: dict  # route -> "id" | "bytes" | "text"
    logprobs: str  # "raw" | "processed" | "unknown"
    n: bool
    errors: dict  # route -> the server's refusal, if any
    probed: bool = True
    sampling: dict = field(default_factory=dict)  # the neutral sampler fields the server accepted (sent every request)
    sampler: str = "preset"  # "neutral" | "standard-only" (extensions refused) | "preset" (not probed)
    full: dict = field(default_factory=dict)  # route -> True where the top-k reached the whole distribution
    continues: dict = field(default_factory=dict)  # "completions": the route continues a raw prompt
    server: str = ""  # what the server says it is (header, fingerprint), part of the cache key
    native: int = 0  # entries llama.cpp's native /completion returned with n_probs (0: no such route)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def usable(self) -> bool:
        return any(v > 0 for v in self.top_logprobs.values())


def body_for(route: str, model: str, top: int, temperature: float = 1.0, max_tokens: int = 1, n: int = 1,
             sampling: dict | None = None, prompt: str = PROMPT) -> dict:
    body: dict = {"model": model, "max_tokens": max_tokens, "temperature": temperature, "seed": PROBE_SEED}
    if route == "chat":
        body |= {"messages": [{"role": "user", "content": prompt}], "logprobs": True, "top_logprobs": top}
    else:
        body |= {"prompt": prompt + "\n", "logprobs": top}
    if n > 1:
        body["n"] = n
    return body | (sampling or {})


def path_for(route: str) -> str:
    return "chat/completions" if route == "chat" else "completions"


def _needs_logprobs(data: dict) -> None:
    """A transport check: a 200 without logprobs is asked again (EMPTY_ATTEMPTS), never taken as the answer."""
    try:
        choices = parse_response(data)
    except (NoLogprobs, Malformed) as exc:
        raise Transient(f"no usable logprobs in a 200 answer ({exc})") from None
    if not choices[0].tokens:
        raise Transient("no tokens came back")


async def _first_top(transport: Transport, route: str, body: dict) -> tuple[dict[str, float], str, int, dict]:
    """The first token's top-k (key -> logprob), the keying, the number of choices, and the raw answer."""
    for attempt in range(EMPTY_ATTEMPTS):
        data, _ = await transport.post(path_for(route), body)
        try:
            _needs_logprobs(data)
            break
        except Transient:
            if attempt == EMPTY_ATTEMPTS - 1:
                raise NoLogprobs("200 answers without logprobs, "
                                 f"{EMPTY_ATTEMPTS} times (the server may drop the logprobs field)") from None
            await asyncio.sleep(0.05 * (attempt + 1))
    choices = parse_response(data)
    first = choices[0].tokens[0]
    return {a.key: a.logprob for a in first.top}, choices[0].keyed_by, len(choices), data


def _named_field(message: str, fields: dict) -> str | None:
    """The sampler field a refusal names (e.g. "Unrecognized request argument supplied: top_k")."""
    low = message.lower()
    hits = [f for f in fields if re.search(rf"\b{re.escape(f)}\b", low)]
    return max(hits, key=len) if hits else None


def _cap_in(message: str) -> int | None:
    """The largest top-k a refusal allows ("greater than max allowed: 20", "less than or equal to 20")."""
    m = re.search(r"(?:max(?:imum)?(?: allowed)?|less than or equal to|<=|at most)\D{0,12}(\d+)", message.lower())
    return int(m.group(1)) if m else None


async def _negotiate(transport: Transport, route: str, model: str, sampling: dict) -> tuple[dict, str | None]:
    """The sampler fields the route accepts: a field the server names in a refusal is changed (top_k 0 <-> -1)
    or dropped. Returns the accepted fields and the route's error if even the plain request fails."""
    fields = dict(sampling)
    tried_off: set = set()
    for _ in range(2 * len(sampling) + 2):
        try:
            await transport.post(path_for(route), body_for(route, model, 1, sampling=fields))
            return fields, None
        except Refused as exc:
            if exc.status in (401, 403):
                raise  # a key problem: said at once, never cached
            name = _named_field(exc.server_message, fields)
            if name is None:
                if "unrecognized" in exc.server_message.lower() or "extra" in exc.server_message.lower():
                    fields = {k: v for k, v in fields.items() if k not in NEUTRAL_EXTENSIONS}
                    continue
                return fields, exc.server_message
            if "unrecognized" in exc.server_message.lower():  # OpenAI proper: every extension is refused
                fields = {k: v for k, v in fields.items() if k not in NEUTRAL_EXTENSIONS}
                continue
            if name == "top_k":
                tried_off.add(fields[name])
                other = next((v for v in TOP_K_OFF if v not in tried_off), None)
                if other is not None:
                    fields[name] = other
                    continue
            fields.pop(name)
    return fields, "the server refused every sampler setting"


async def _top_search(transport: Transport, route: str, model: str, sampling: dict, limit: int):
    """(largest top-k, keyed_by, full?, first answer's top) on a route: 20, 200, 2000, ... up to `limit`."""
    best, keyed, full, alts, error = 0, None, False, {}, None
    ask = min(FIRST_ASK, limit)
    while True:
        try:
            got, keyed_now, _, _ = await _first_top(transport, route, body_for(route, model, ask, sampling=sampling))
        except Refused as exc:
            error = exc.server_message
            if "logprob" not in exc.server_message.lower() or exc.status in (401, 403, 404):
                raise
            cap = _cap_in(exc.server_message)
            if best:
                if cap is not None and best < cap < ask:
                    ask = cap
                    continue
                break
            ask = cap if cap is not None and cap < ask else ask // 2
            if ask < 1:
                raise
            continue
        count = min(ask, len(got))
        if count > best:
            best, keyed, alts = count, keyed_now, got
        capped = len(got) < 0.9 * ask  # text keys can collapse a few tokens: well below the ask is a cap
        full = capped and sum(math.exp(v) for v in got.values() if math.isfinite(v)) >= FULL_MASS
        if capped or ask >= limit:
            break
        ask = min(ask * GROWTH, limit)
    return best, keyed, full, alts, error


async def _native(transport: Transport, url: str, limit: int, sampling: dict) -> tuple[int, bool, str | None]:
    """(entries, whole distribution?, error) of llama.cpp's native /completion asked for n_probs = limit."""
    from deval.backends import native
    from deval.backends.http import AuthFailed
    from deval.errors import BackendError

    try:
        data, _ = await transport.post(url, native.body(PROMPT + "\n", limit, PROBE_SEED, sampling))
        ids, lps = native.read_row(data)
    except AuthFailed:
        raise
    except (BackendError, NoLogprobs, Malformed) as exc:
        if isinstance(exc, Refused) and exc.status in (401, 403):
            raise
        return 0, False, str(exc)
    mass = float(np.exp(lps[np.isfinite(lps)]).sum())
    return len(ids), len(ids) < limit and mass >= FULL_MASS, None


async def probe(transport: Transport, model: str, limit: int, sampling: dict,
                native_url: str | None = None) -> Capabilities:
    """Negotiate sampler fields, search each route's largest top-k, then raw-vs-processed and n on the best route;
    where native_url is given (llama.cpp's server), whether its native /completion returns n_probs."""
    top, keyed, errors, full, firsts, accepted = {}, {}, {}, {}, {}, dict(sampling)
    for route in ("chat", "completions"):
        top[route] = 0
        fields, error = await _negotiate(transport, route, model, accepted)
        if error is not None:
            errors[route] = error
            continue
        accepted = fields
        try:
            best, keyed_by, whole, alts, error = await _top_search(transport, route, model, accepted, limit)
        except Refused as exc:
            if exc.status in (401, 403):
                raise
            errors[route] = exc.server_message
            continue
        except (NoLogprobs, Malformed) as exc:
            errors[route] = str(exc)
            continue
        top[route], full[route] = best, whole
        if best:
            keyed[route], firsts[route] = keyed_by, alts
        elif error:
            errors[route] = error
    working = max(("chat", "completions"), key=lambda r: (top[r], r == "chat")) if any(top.values()) else None
    kind, n_works = "unknown", False
    if working is not None:
        ask = min(top[working], FIRST_ASK)
        try:
            warm, _, _, _ = await _first_top(transport, working, body_for(working, model, ask, sampling=accepted))
            cold, _, _, _ = await _first_top(transport, working,
                                             body_for(working, model, ask, temperature=0.5, sampling=accepted))
            common = [k for k in warm if k in cold and math.isfinite(warm[k]) and math.isfinite(cold[k])]
            common = sorted(common, key=lambda k: -warm[k])[:COMPARED]
            if common:  # the median move of the likeliest tokens: robust to prompt-cache noise in the far tail
                moved = float(np.median([abs(warm[k] - cold[k]) for k in common]))
                kind = "raw" if moved < RAW_TOLERANCE else "processed"
        except (Refused, NoLogprobs, Malformed) as exc:
            errors[f"{working}-temperature"] = str(exc)
        try:
            _, _, count, _ = await _first_top(transport, working, body_for(working, model, 1, n=2, sampling=accepted))
            n_works = count == 2
        except (Refused, NoLogprobs, Malformed) as exc:
            errors[f"{working}-n"] = str(exc)
    dropped = [k for k in sampling if k in NEUTRAL_EXTENSIONS and k not in accepted]
    sampler = "standard-only" if dropped else "neutral"
    native = 0
    if native_url is not None:
        native, full["native"], error = await _native(transport, native_url, limit, accepted)
        if error is not None:
            errors["native"] = error
    return Capabilities(chat=top["chat"] > 0, completions=top["completions"] > 0, top_logprobs=top,
                        keyed_by=keyed, logprobs=kind, n=n_works, errors=errors, sampling=accepted, sampler=sampler,
                        full=full, continues={"completions": top["completions"] > 0}, native=native)


async def server_identity(client) -> str:
    """What the server says it is, from one GET of /models: its Server header and model entries (no retries)."""
    try:
        response = await client.get("models", timeout=5.0)
        if response.status_code != 200:
            return f"status {response.status_code}"
        data = response.json()
    except Exception:  # noqa: BLE001 - any failure just means "unknown": the probe itself reports errors
        return "unknown"
    models = data.get("data") if isinstance(data, dict) else None
    entries = []
    for m in models if isinstance(models, list) else []:
        if isinstance(m, dict):
            entries.append({k: v for k, v in m.items() if k not in ("created",)})
    who = response.headers.get("server", "") or "server"
    digest = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:12]
    return f"{who[:60]} (models {digest})"


class ProbeCache:
    """Probe answers per (base URL, model, server) in one JSON file of the cache directory.

    Entries are keyed by a hash of the full URL; the URL itself is written only redacted (no user:password,
    no query values). Only answers with logprobs are stored; entries of another schema are ignored."""

    def __init__(self, directory: Path | None):
        self.path = None if directory is None else Path(directory) / "probes.json"

    def _all(self) -> dict:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _key(base_url: str, model: str, server: str) -> str:
        return endpoint_id(base_url, model + "\n" + server)

    def get(self, base_url: str, model: str, server: str, limit: int) -> Capabilities | None:
        entry = self._all().get(self._key(base_url, model, server))
        if not isinstance(entry, dict) or entry.get("schema") != SCHEMA or entry.get("limit") != limit:
            return None
        try:
            caps = Capabilities(**entry["capabilities"])
        except (TypeError, KeyError):
            return None
        return caps if caps.usable else None  # a failure is never trusted, even one an older deval stored

    def put(self, base_url: str, model: str, server: str, limit: int, caps: Capabilities) -> None:
        if self.path is None or not caps.usable:
            return
        data = self._all()
        data[self._key(base_url, model, server)] = {"schema": SCHEMA, "base_url": redact(base_url), "model": model,
                                                   "limit": limit, "capabilities": caps.to_dict()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        dump_json(self.path, data)
