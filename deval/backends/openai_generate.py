"""Free-text generation over an OpenAI-compatible endpoint: chat route, or completions when the spec is raw.

Each request carries temperature, seed, max_tokens, stop, the preset's neutral sampling settings and the spec's
filters; it goes through the backend's transport (retries) and response cache, concurrently (bounded).
"""

from __future__ import annotations

import asyncio
import queue
from typing import Sequence

from deval.backends.cache import request_key
from deval.backends.http import Transient, Transport
from deval.backends.probe import path_for
from deval.core.protocol import GenerateSpec
from deval.errors import ConfigError

SEED_MODULUS = 2**31  # as openai.py: inside both 32-bit and int64 seeds


def body_for(spec: GenerateSpec, model: str, sampling: dict) -> tuple[str, dict]:
    """The route and request body for one spec."""
    route = "completions" if spec.raw else "chat"
    body: dict = {"model": model, "max_tokens": spec.max_tokens, "temperature": spec.temperature,
                  "seed": spec.seed % SEED_MODULUS}
    if spec.raw:
        body["prompt"] = spec.prompt
    else:
        body["messages"] = [{"role": "user", "content": spec.prompt}]
    if spec.stop:
        body["stop"] = list(spec.stop)
    body |= sampling
    f = spec.filters
    body |= {k: v for k, v in (("top_k", f.top_k), ("top_p", f.top_p), ("min_p", f.min_p)) if v is not None}
    return route, body


def response_text(data: dict) -> str:
    """The first choice's text (completions) or message content (chat); Transient when the shape is wrong."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise Transient("unusable response: no choices")
    first = choices[0]
    if isinstance(first.get("message"), dict):
        content = first["message"].get("content")
        return content if isinstance(content, str) else ""
    if isinstance(first.get("text"), str):
        return first["text"]
    raise Transient("unusable response: the choice has neither text nor message")


async def _one(backend, transport: Transport, spec: GenerateSpec) -> str:
    route, body = body_for(spec, backend.model, dict(backend.preset.sampling))
    key = request_key(backend.settings.base_url, route, body)
    cached = backend.cache.get(key)
    if cached is not None:
        return response_text(cached)
    backend.requests += 1
    data, raw = await transport.post(path_for(route), body, lambda d: response_text(d) and None)
    backend.cache.put(key, raw)
    return response_text(data)


async def produce(backend, specs: Sequence[GenerateSpec], out: queue.Queue, handle: dict) -> None:
    """Put (index, text) on `out` as each request finishes."""
    for spec in specs:
        if spec.max_tokens < 1 or spec.temperature < 0:
            raise ConfigError(f"max_tokens must be >= 1 and temperature >= 0 (got {spec.max_tokens}, "
                              f"{spec.temperature})")
    handle["loop"], handle["task"] = asyncio.get_running_loop(), asyncio.current_task()
    gate = asyncio.Semaphore(backend.settings.concurrency)
    async with backend._client() as client:
        transport = backend._transport(client, seed=specs[0].seed if specs else 0)

        async def one(index: int, spec: GenerateSpec) -> tuple[int, str]:
            async with gate:
                return index, await _one(backend, transport, spec)

        tasks = [asyncio.ensure_future(one(i, spec)) for i, spec in enumerate(specs)]
        try:
            for finished in asyncio.as_completed(tasks):
                out.put(await finished)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            backend.retries += transport.retries
