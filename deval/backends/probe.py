"""Probe an endpoint: which routes give logprobs, how many, keyed how, raw or processed, and whether n works."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deval.backends.cache import endpoint_id
from deval.backends.http import Refused, Transport
from deval.backends.logprobs import Malformed, NoLogprobs, parse_response
from deval.backends.urls import redact
from deval.jsonio import dump_json

PROMPT = "Pick a random digit from 1 to 9. Answer with the digit only."
RAW_TOLERANCE = 0.02  # logprobs moving less than this between temperatures 1 and 0.5 are raw
COMPARED = 5  # likeliest tokens compared between the two temperatures
PROBE_SEED = 1234


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

    def to_dict(self) -> dict:
        return asdict(self)


def body_for(route: str, model: str, top: int, temperature: float = 1.0, max_tokens: int = 2, n: int = 1,
             sampling: dict | None = None) -> dict:
    body: dict = {"model": model, "max_tokens": max_tokens, "temperature": temperature, "seed": PROBE_SEED}
    if route == "chat":
        body |= {"messages": [{"role": "user", "content": PROMPT}], "logprobs": True, "top_logprobs": top}
    else:
        body |= {"prompt": PROMPT + "\n", "logprobs": top}
    if n > 1:
        body["n"] = n
    return body | (sampling or {})


def path_for(route: str) -> str:
    return "chat/completions" if route == "chat" else "completions"


async def _first_top(transport: Transport, route: str, body: dict) -> tuple[dict[str, float], str, int]:
    data, _ = await transport.post(path_for(route), body)
    choices = parse_response(data)
    if not choices[0].tokens:
        raise NoLogprobs("no tokens came back")
    first = choices[0].tokens[0]
    return {a.key: a.logprob for a in first.top}, choices[0].keyed_by, len(choices)


async def probe(transport: Transport, model: str, asks: tuple[int, ...], sampling: dict) -> Capabilities:
    """Ask each route for logprobs at falling top-k until one works; then raw-vs-processed and n on that route."""
    top, keyed, errors = {}, {}, {}
    firsts = {}
    for route in ("chat", "completions"):
        top[route] = 0
        for ask in asks:
            try:
                alts, keyed[route], _ = await _first_top(transport, route, body_for(route, model, ask, sampling=sampling))
            except Refused as exc:
                errors[route] = exc.server_message
                if "logprob" not in exc.server_message.lower() or exc.status in (401, 403, 404):
                    break
                continue  # e.g. "greater than max allowed": try a smaller top-k
            except (NoLogprobs, Malformed) as exc:
                errors[route] = str(exc)
                break
            top[route] = min(ask, len(alts))
            firsts[route] = alts
            errors.pop(route, None)
            break
    working = next((r for r in ("chat", "completions") if top[r] > 0), None)
    kind, n_works = "unknown", False
    if working is not None:
        ask = top[working]
        try:
            cold, _, _ = await _first_top(transport, working,
                                          body_for(working, model, ask, temperature=0.5, sampling=sampling))
            warm = firsts[working]
            common = [k for k in warm if k in cold and math.isfinite(warm[k]) and math.isfinite(cold[k])]
            common = sorted(common, key=lambda k: -warm[k])[:COMPARED]
            if common:  # the median move of the likeliest tokens: robust to prompt-cache noise in the far tail
                moved = float(np.median([abs(warm[k] - cold[k]) for k in common]))
                kind = "raw" if moved < RAW_TOLERANCE else "processed"
        except (Refused, NoLogprobs, Malformed) as exc:
            errors[f"{working}-temperature"] = str(exc)
        try:
            _, _, count = await _first_top(transport, working, body_for(working, model, 1, n=2, sampling=sampling))
            n_works = count == 2
        except (Refused, NoLogprobs, Malformed) as exc:
            errors[f"{working}-n"] = str(exc)
    return Capabilities(chat=top["chat"] > 0, completions=top["completions"] > 0, top_logprobs=top,
                        keyed_by=keyed, logprobs=kind, n=n_works, errors=errors)


class ProbeCache:
    """Probe answers per (base URL, model) in one JSON file of the cache directory.

    Entries are keyed by a hash of the full URL; the URL itself is written only redacted (no user:password,
    no query values)."""

    def __init__(self, directory: Path | None):
        self.path = None if directory is None else Path(directory) / "probes.json"

    def _all(self) -> dict:
        if self.path is None or not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return {}

    def get(self, base_url: str, model: str, asks: tuple[int, ...]) -> Capabilities | None:
        entry = self._all().get(endpoint_id(base_url, model))
        if not entry or entry.get("asks") != list(asks):
            return None
        try:
            return Capabilities(**entry["capabilities"])
        except TypeError:
            return None

    def put(self, base_url: str, model: str, asks: tuple[int, ...], caps: Capabilities) -> None:
        if self.path is None:
            return
        data = self._all()
        data[endpoint_id(base_url, model)] = {"base_url": redact(base_url), "model": model, "asks": list(asks),
                                             "capabilities": caps.to_dict()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        dump_json(self.path, data)
