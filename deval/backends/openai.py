"""The OpenAI-compatible backend: P_token from the logprobs of any OpenAI-style endpoint (see presets).

Sequence mode costs one request per run: the generation comes back with per-token top-k logprobs and every
item position is read from it. Independent mode costs one request per run where the server honours `n`, else
one per step. Requests run concurrently (bounded), every response is cached as it arrives, and the steps of a
run are yielded when its responses are in.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import httpx
import numpy as np

from deval.core.answers import Position
from deval.core.protocol import RunSpec, Step
from deval.backends.cache import ResponseCache, default_cache_dir, request_key
from deval.backends.http import RetryPolicy, Transient, Transport
from deval.backends.logprobs import Choice, Malformed, NoLogprobs, parse_response
from deval.backends.positions import find_positions, first_answer_position, item_view
from deval.backends.presets import ROUTES, Preset, get_preset
from deval.backends.probe import Capabilities, ProbeCache, path_for, probe
from deval.backends.urls import MARK, is_redacted, redact
from deval.errors import BackendError, ConfigError

SEED_MODULUS = 2**31  # servers take 32-bit (llama.cpp) or int64 (OpenAI) seeds: stay inside both
TOKENS_PER_ITEM_SLACK = 3  # separator, space and one spare token per item
PREAMBLE_TOKENS = 48


@dataclass(frozen=True)
class Settings:
    """Everything the backend needs besides the model; validated once, here."""

    preset: Preset
    base_url: str
    api_key_env: str
    route: str
    top_logprobs: int
    concurrency: int = 16
    timeout: float = 120.0
    retry_budget: float = 300.0
    retry_base: float = 0.5
    cache_dir: Path | None = None
    probe: bool = True
    max_tokens: int | None = None

    @classmethod
    def build(cls, preset: Preset, base_url=None, api_key_env=None, route=None, top_logprobs=None, concurrency=None,
              timeout=None, retry_budget=None, retry_base=None, cache_dir=None, no_cache=False, no_probe=False,
              max_tokens=None) -> "Settings":
        if base_url is None and preset.name == "openai":
            base_url = os.environ.get("OPENAI_BASE_URL") or None  # as the openai SDK does
        base_url = (base_url or preset.base_url).rstrip("/")
        if is_redacted(base_url):  # a run directory stores the URL with its secrets masked
            raise ConfigError(f"--base-url {base_url} has its secrets masked ({MARK}), as a run directory stores it; "
                              "pass --base-url again with the full URL")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url must start with http:// or https:// (got {redact(base_url)})")
        _check_url(base_url)
        route = route or preset.route
        if route not in ROUTES:
            raise ConfigError(f"--route must be one of {', '.join(ROUTES)} (got {route})")
        top = preset.top_logprobs_cap if top_logprobs is None else top_logprobs
        checks = [("--top-logprobs", top, 1), ("--concurrency", concurrency, 1), ("--timeout", timeout, 0.001),
                  ("--retry-budget", retry_budget, 0), ("--max-tokens", max_tokens, 1)]
        for name, value, lo in checks:
            if value is not None and value < lo:
                raise ConfigError(f"{name} must be >= {lo} (got {value})")
        if no_cache:
            directory = None
        else:
            directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return cls(preset=preset, base_url=base_url, api_key_env=preset.api_key_env if api_key_env is None else api_key_env,
                   route=route, top_logprobs=int(top), concurrency=concurrency or 16, timeout=timeout or 120.0,
                   retry_budget=300.0 if retry_budget is None else retry_budget,
                   retry_base=0.5 if retry_base is None else retry_base, cache_dir=directory,
                   probe=not no_probe, max_tokens=max_tokens)


def _check_url(url: str) -> None:
    """A ConfigError unless the URL parses with a host and a port in range (urllib's reason; it quotes no secret)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises for a port out of range or not a number
        if not parts.hostname:
            raise ValueError("no host")
        if any(ch.isspace() for ch in url):
            raise ValueError("it contains whitespace")
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        why = str(exc) if isinstance(exc, ValueError) else "httpx cannot parse it"
        raise ConfigError(f"--base-url {redact(url)} is not a valid URL ({why}); "
                          "give it as http://HOST:PORT/v1") from None


def _run_sync(coro):
    """Run a coroutine to completion on a fresh event loop in a worker thread (safe inside a running loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAIBackend:
    """Speaks the backend protocol to an OpenAI-compatible HTTP endpoint."""

    name = "openai"
    exact = False

    OPTIONS = ("base_url", "api_key_env", "route", "top_logprobs", "concurrency", "timeout", "retry_budget",
               "cache_dir", "no_cache", "no_probe", "max_tokens")

    def __init__(self, model: str | None = None, preset: str = "openai", **options):
        unknown = sorted(set(options) - set(self.OPTIONS) - {"retry_base"})
        if unknown:
            raise ConfigError(f"the openai backend does not take --{unknown[0].replace('_', '-')}")
        if not model:
            raise ConfigError("the openai backend needs --model NAME (the server's model name)")
        self.model = model
        self.preset = get_preset(preset)
        self.settings = Settings.build(self.preset, **options)
        self.name = self.preset.name
        self._api_key = os.environ.get(self.settings.api_key_env) if self.settings.api_key_env else None
        if (self.preset.key_required and not self._api_key and self.settings.base_url == self.preset.base_url):
            raise ConfigError(f"{self.preset.name} needs an API key: set ${self.settings.api_key_env} "
                              "(or name another variable with --api-key-env)")
        self._caps: Capabilities | None = None
        self.cache = ResponseCache(self.settings.cache_dir, self.settings.base_url, model)
        self.requests = 0  # sent over the wire (cache misses)
        self.retries = 0

    # -- capabilities -------------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        s = self.settings
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        limits = httpx.Limits(max_connections=s.concurrency, max_keepalive_connections=s.concurrency)
        # a query in the base URL (?api-version=..., ?key=...) goes with every request, not glued to the path
        parts = urllib.parse.urlsplit(s.base_url)
        base = urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/", query="", fragment=""))
        return httpx.AsyncClient(base_url=base, params=httpx.QueryParams(parts.query), headers=headers,
                                 limits=limits, timeout=httpx.Timeout(s.timeout, connect=min(s.timeout, 10.0)))

    def _transport(self, client: httpx.AsyncClient, seed: int = 0) -> Transport:
        policy = RetryPolicy(budget_s=self.settings.retry_budget, base_s=self.settings.retry_base)
        return Transport(client, policy, np.random.default_rng(seed), api_key_env=self.settings.api_key_env)

    def _asks(self) -> tuple[int, ...]:
        top = self.settings.top_logprobs
        return tuple(dict.fromkeys(a for a in (top, 20, 10, 5, 1) if a <= top))

    def probe(self, refresh: bool = False) -> Capabilities:
        """Probe the endpoint (or read the cached answer for this base URL and model)."""
        store = ProbeCache(self.settings.cache_dir)
        asks = self._asks()
        cached = None if refresh else store.get(self.settings.base_url, self.model, asks)
        if cached is not None:
            return cached

        async def go():
            async with self._client() as client:
                return await probe(self._transport(client), self.model, asks, dict(self.preset.sampling))

        caps = _run_sync(go())
        store.put(self.settings.base_url, self.model, asks, caps)
        return caps

    def capabilities(self) -> Capabilities:
        if self._caps is None:
            if self.settings.probe:
                self._caps = self.probe()
            else:
                p = self.preset
                top = min(self.settings.top_logprobs, p.top_logprobs_cap)
                self._caps = Capabilities(chat=True, completions=True, top_logprobs={"chat": top, "completions": top},
                                          keyed_by={}, logprobs=p.logprobs, n=p.n, errors={}, probed=False)
        return self._caps

    def _route(self) -> tuple[str, int]:
        caps = self.capabilities()
        route = self.settings.route
        if caps.top_logprobs.get(route, 0) > 0:
            return route, min(self.settings.top_logprobs, caps.top_logprobs[route])
        other = next((r for r in ROUTES if caps.top_logprobs.get(r, 0) > 0), None)
        said = "; ".join(f"{r}: {m}" for r, m in caps.errors.items()) or "no logprobs in the responses"
        if other is None:
            raise BackendError(f"{redact(self.settings.base_url)} returned no logprobs for model {self.model} on "
                               f"chat or completions ({said}); deval needs logprobs to read P_token")
        raise BackendError(f"the {route} route returned no logprobs for {self.model} ({said}); "
                           f"the {other} route does: pass --route {other}")

    def describe_url(self) -> str:
        return redact(self.settings.base_url)

    def describe(self) -> dict:
        route, top = self._route()
        caps = self.capabilities()
        return {"name": self.name, "preset": self.preset.name, "model": self.model, "exact": False,
                "base_url": redact(self.settings.base_url), "route": route, "top_logprobs": top,
                "logprobs": caps.logprobs, "n": caps.n, "api_key_env": self.settings.api_key_env,
                "capabilities": caps.to_dict(), "quirks": list(self.preset.quirks),
                "sampling_sent": dict(self.preset.sampling),
                "cache": str(self.cache.path) if self.cache.path else None,
                "about": "P_token from server logprobs: top-k only, the unseen tail is recorded per step"}

    # -- requests -----------------------------------------------------------------------------------------

    def _body(self, spec: RunSpec, route: str, top: int, seed: int, n: int = 1) -> dict:
        task = spec.task
        longest = max(len(x) for x in task.items)
        per_item = longest + TOKENS_PER_ITEM_SLACK
        if spec.mode == "sequence":
            max_tokens = self.settings.max_tokens or spec.steps * per_item + PREAMBLE_TOKENS
        else:
            max_tokens = self.settings.max_tokens or per_item + 8
        body: dict = {"model": self.model, "max_tokens": max_tokens, "temperature": spec.temperature,
                      "seed": seed % SEED_MODULUS}
        if route == "chat":
            body |= {"messages": [{"role": "user", "content": spec.prompt}], "logprobs": True, "top_logprobs": top}
        else:
            body |= {"prompt": spec.completion, "logprobs": top}  # ends with the task's cue (docs/protocol.md)
        if n > 1:
            body["n"] = n
        body |= dict(self.preset.sampling)
        f = spec.filters
        body |= {k: v for k, v in (("top_k", f.top_k), ("top_p", f.top_p), ("min_p", f.min_p)) if v is not None}
        return body

    async def _fetch(self, transport: Transport, route: str, body: dict, n: int) -> list[Choice]:
        """Parsed choices for one request body: from the cache, else from the server (then cached)."""
        key = request_key(self.settings.base_url, route, body)
        cached = self.cache.get(key)
        if cached is not None:
            return parse_response(cached)
        parsed: list[Choice] = []

        def check(data: dict) -> None:
            try:
                choices = parse_response(data)
            except (NoLogprobs, Malformed) as exc:
                raise Transient(f"unusable response: {exc}") from None
            if len(choices) < n:
                raise Transient(f"asked for {n} choices, got {len(choices)}")
            parsed[:] = choices

        self.requests += 1
        _, raw = await transport.post(path_for(route), body, check)
        self.cache.put(key, raw)
        return parsed

    def _steps(self, spec: RunSpec, choice_positions: list[tuple[Choice, Position | None]], walk_flags=()) -> list[Step]:
        caps = self.capabilities()
        raw = caps.logprobs != "processed"
        extra = tuple(walk_flags) + (("logprobs-kind-unknown",) if caps.logprobs == "unknown" else ())
        steps = []
        task = spec.task
        for t, (choice, pos) in enumerate(choice_positions):
            if pos is None:  # nothing was generated
                steps.append(Step(task=task.name, run=spec.run, step=t, probs=(0.0,) * len(task.items), sampled=None,
                                  text="", tail=1.0, missing=tuple(range(len(task.items))),
                                  flags=extra + ("empty-output",), tail_cap=1.0))
                continue
            view = item_view(choice.tokens[pos.token], task.items, task.separator, spec.temperature, spec.filters,
                             raw=raw, matching=task.matching)
            keyed = ("text-keyed",) if choice.keyed_by == "text" else ()  # text keys can collapse two tokens
            steps.append(Step(task=task.name, run=spec.run, step=t, probs=view.probs, sampled=pos.item, text=pos.text,
                              tail=view.tail, missing=view.missing, flags=extra + keyed + view.flags,
                              tail_cap=view.tail_cap))
        if steps:
            last = steps[-1]
            short = ("short-run",) if len(steps) < spec.steps else ()
            steps[-1] = Step(**{**last.__dict__, "final": True, "flags": tuple(dict.fromkeys(last.flags + short))})
        return steps

    async def _run(self, transport: Transport, spec: RunSpec, route: str, top: int) -> list[Step]:
        task = spec.task
        if spec.mode == "sequence":
            choice = (await self._fetch(transport, route, self._body(spec, route, top, spec.seed), 1))[0]
            positions, flags = find_positions(choice, task.items, task.separator, spec.steps, task.matching)
            return self._steps(spec, [(choice, p) for p in positions] or [(choice, None)], flags)
        if self.capabilities().n and spec.steps > 1:
            choices = await self._fetch(transport, route, self._body(spec, route, top, spec.seed, n=spec.steps),
                                        spec.steps)
        else:
            bodies = [self._body(spec, route, top, spec.seed + 1_000_003 * t) for t in range(spec.steps)]
            choices = [c[0] for c in await asyncio.gather(*(self._fetch(transport, route, b, 1) for b in bodies))]
        return self._steps(spec, [(c, first_answer_position(c, task.items, task.separator, task.matching))
                                  for c in choices[: spec.steps]])

    async def _produce(self, runs: Sequence[RunSpec], out: queue.Queue, handle: dict) -> None:
        handle["loop"], handle["task"] = asyncio.get_running_loop(), asyncio.current_task()
        route, top = self._route()
        gate = asyncio.Semaphore(self.settings.concurrency)
        async with self._client() as client:
            transport = self._transport(client, seed=runs[0].seed if runs else 0)

            async def one(spec: RunSpec) -> list[Step]:
                async with gate:
                    return await self._run(transport, spec, route, top)

            tasks = [asyncio.ensure_future(one(spec)) for spec in runs]
            try:
                for finished in asyncio.as_completed(tasks):
                    for step in await finished:
                        out.put(step)
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self.retries += transport.retries

    def measure(self, runs: Sequence[RunSpec]) -> Iterator[Step]:
        if any(spec.positions != "free" for spec in runs):
            raise ConfigError("--positions constrained needs an exact backend (local or mock); over HTTP deval "
                              "measures free positions only")
        self._route()  # probe (and fail clearly) before any thread starts
        out: queue.Queue = queue.Queue()
        handle: dict = {}
        done = object()

        def work() -> None:
            try:
                asyncio.run(self._produce(runs, out, handle))
            except BaseException as exc:  # handed to the consumer, raised there
                out.put(exc)
            finally:
                out.put(done)

        thread = threading.Thread(target=work, name="deval-openai", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if item is done:
                    break
                if isinstance(item, asyncio.CancelledError):
                    continue
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            loop, task = handle.get("loop"), handle.get("task")
            if thread.is_alive() and loop is not None and task is not None:
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:  # the loop closed meanwhile
                    pass
            thread.join()

    def close(self) -> None:
        self.cache.close()
