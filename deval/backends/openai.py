"""The OpenAI-compatible backend: P_token from the logprobs of any OpenAI-style endpoint (see presets).

Sequence mode costs one request per run: the generation comes back with per-token top-k logprobs and every
item position is read from it. Independent mode costs one request per run where the server honours `n`, else
one per step. Requests run concurrently (bounded), every response is cached as it arrives, and the steps of a
run are yielded when its responses are in.
"""

from __future__ import annotations

import dataclasses

import asyncio
import os
import queue
import re
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import httpx
import numpy as np

from deval.core.answers import Position
from deval.core.protocol import GenerateSpec, RunSpec, Step
from deval.backends.bridge import stream
from deval.backends.cache import ResponseCache, request_key
from deval.backends.choices import FewerChoices, n_from
from deval.backends.http import Limiter, Refused, RetryPolicy, Transient, Transport
from deval.backends.logprobs import Choice, Malformed, NoLogprobs, parse_response
from deval.backends.native import LABEL_EXACT, completion_url
from deval.backends.positions import find_positions, item_view
from deval.backends.presets import ROUTES, get_preset
from deval.backends.probe import NEUTRAL_EXTENSIONS, Capabilities, ProbeCache, path_for, probe, server_identity
from deval.backends.sampler_check import FilterEvidence, run_flags
from deval.backends.settings import Settings
from deval.backends.urls import redact
from deval.errors import BackendError, ConfigError

SEED_MODULUS = 2**31  # servers take 32-bit (llama.cpp) or int64 (OpenAI) seeds: stay inside both
TOKENS_PER_ITEM_SLACK = 3  # separator, space and one spare token per item
PREAMBLE_TOKENS = 48
RUN_TOP_DEFAULT = 100  # top-k asked per generated token where the probe found more (responses grow with it)
STEP_TOP = 1000  # top-k per step-by-step request (T=1 needs only the trie's tokens; more where it is the vocabulary)
N_SEED_STRIDE = 7_919  # seed offset between the requests one split `n` becomes


def _run_sync(coro):
    """Run a coroutine to completion on a fresh event loop in a worker thread (safe inside a running loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class OpenAIBackend:
    """Speaks the backend protocol to an OpenAI-compatible HTTP endpoint."""

    name = "openai"
    exact = False

    OPTIONS = ("base_url", "api_key_env", "route", "top_logprobs", "concurrency", "timeout", "retry_budget",
               "cache_dir", "no_cache", "no_probe", "max_tokens", "tokenizer")

    def __init__(self, model: str | None = None, preset: str = "openai", tokenizer: str | None = None, **options):
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
        self.retry_reasons: dict[str, int] = {}  # why requests were retried, counted as they happen
        self.timeouts = 0
        self.lowest_concurrency = self.settings.concurrency
        self.n_limit: int | None = None  # the largest n the server accepted after refusing a larger one
        self.evidence = FilterEvidence()  # draws the server's default filters would have excluded
        self.tokenizer = tokenizer  # a GGUF with the server model's tokenizer: runs are driven step by step
        self._stepper = None

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

    def _transport(self, client: httpx.AsyncClient, seed: int = 0, limiter: Limiter | None = None) -> Transport:
        policy = RetryPolicy(budget_s=self.settings.retry_budget, base_s=self.settings.retry_base)
        return Transport(client, policy, np.random.default_rng(seed), api_key_env=self.settings.api_key_env,
                         limiter=limiter, on_retry=self._count_retry)

    def _count_retry(self, reason: str) -> None:
        """Every retry as it happens: counted by reason (digits dropped, so alike reasons add up)."""
        self.retries += 1
        short = re.sub(r"\d+(\.\d+)?", "N", reason.split(":")[0])[:60]
        self.retry_reasons[short] = self.retry_reasons.get(short, 0) + 1

    def probe(self, refresh: bool = False) -> Capabilities:
        """Probe the endpoint, or read the answer cached for this base URL, model and server (never a failure)."""
        store = ProbeCache(self.settings.cache_dir)
        limit = self.settings.probe_limit
        sampling = dict(NEUTRAL_EXTENSIONS) | dict(self.preset.sampling)

        async def go():
            async with self._client() as client:
                server = await server_identity(client)
                cached = None if refresh else store.get(self.settings.base_url, self.model, server, limit)
                if cached is not None:
                    return cached, server, True
                native_url = None
                if self.preset.native or "llama.cpp" in server.split(" (models")[0].lower():
                    native_url = completion_url(self.settings.base_url)  # llama.cpp's server: its native route
                caps = await probe(self._transport(client), self.model, limit, sampling, native_url)
                return Capabilities(**{**caps.to_dict(), "server": server}), server, False

        retries = self.retries
        caps, server, hit = _run_sync(go())
        self.retries = retries  # the probe's retries are not the run's
        if not hit:
            store.put(self.settings.base_url, self.model, server, limit, caps)
        return caps

    def capabilities(self) -> Capabilities:
        if self._caps is None:
            if self.settings.probe:
                self._caps = self.probe()
            else:
                p = self.preset
                top = min(self.settings.top_logprobs, p.top_logprobs_cap)
                self._caps = Capabilities(chat=True, completions=True, top_logprobs={"chat": top, "completions": top},
                                          keyed_by={}, logprobs=p.logprobs, n=p.n, errors={}, probed=False,
                                          sampling=dict(p.sampling))
        return self._caps

    def sampling(self) -> dict:
        """The neutral sampler fields to send: what the probe found the server accepts, else the preset's."""
        return dict(self._caps.sampling) if self._caps is not None else dict(self.preset.sampling)

    def _route(self) -> tuple[str, int]:
        caps = self.capabilities()
        route = self.settings.route
        if caps.top_logprobs.get(route, 0) > 0:
            wanted = self.settings.top_logprobs
            if caps.probed and not self.settings.top_given:  # the probe found the cap: use it, within reason
                wanted = max(wanted, RUN_TOP_DEFAULT)
            return route, min(wanted, caps.top_logprobs[route])
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
        stepping = self.stepper()
        if stepping is not None:
            route, top = "completions, step by step", stepping.top
            if stepping.native_url is not None:
                route = LABEL_EXACT if caps.full.get("native") else f"native /completion (top {top}, bounded)"
        return {"name": self.name, "preset": self.preset.name, "model": self.model, "exact": False,
                "base_url": redact(self.settings.base_url), "route": route, "top_logprobs": top,
                "logprobs": caps.logprobs, "n": caps.n, "api_key_env": self.settings.api_key_env,
                "capabilities": caps.to_dict(), "quirks": list(self.preset.quirks),
                "sampling_sent": dict(caps.sampling), "sampler": caps.sampler,
                "concurrency": self.settings.concurrency, "requests_in_flight": self.in_flight(),
                "cache": str(self.cache.path) if self.cache.path else None,
                "about": ("P_token from llama.cpp's native /completion at token-id prefixes: the whole vocabulary "
                          "where it counts, exact (tail 0)") if route == LABEL_EXACT else
                         "P_token from server logprobs: top-k only, the unseen tail is recorded per step"}

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
        body |= dict(self.capabilities().sampling)  # neutral values the server accepted (or the preset's)
        f = spec.filters
        body |= {k: v for k, v in (("top_k", f.top_k), ("top_p", f.top_p), ("min_p", f.min_p)) if v is not None}
        return body

    async def _fetch(self, transport: Transport, route: str, body: dict, n: int, fresh: bool = False) -> list[Choice]:
        """Parsed choices for one request body: from the cache, else (or where fresh) from the server (then cached)."""
        key = request_key(self.settings.base_url, route, body)
        cached = None if fresh else self.cache.get(key)
        if cached is not None:
            return parse_response(cached)
        parsed: list[Choice] = []

        def check(data: dict) -> None:
            try:
                choices = parse_response(data)
            except (NoLogprobs, Malformed) as exc:
                raise Transient(f"unusable response: {exc}") from None
            if len(choices) < n:
                if len(choices) >= 1 and n > 1:
                    raise FewerChoices(len(choices))  # n not honoured (llama-cpp-python): split, do not retry
                raise Transient(f"asked for {n} choices, got {len(choices)}")
            parsed[:] = choices

        self.requests += 1
        _, raw = await transport.post(path_for(route), body, check)
        self.cache.put(key, raw)
        return parsed

    def _filter_flags(self, spec: RunSpec, choices: list[Choice]) -> tuple[str, ...]:
        """server-filtered where the run's draws show filters deval did not ask for (sampler_check)."""
        return run_flags(spec, self.capabilities(), self.settings.base_url, choices, self.evidence)

    def _steps(self, spec: RunSpec, choice_positions: list[tuple[Choice, Position | None]], walk_flags=()) -> list[Step]:
        caps = self.capabilities()
        raw = caps.logprobs != "processed"
        choices = list({id(c): c for c, _ in choice_positions}.values())
        extra = (tuple(walk_flags) + (("logprobs-kind-unknown",) if caps.logprobs == "unknown" else ())
                 + self._filter_flags(spec, choices))
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

    def in_flight(self) -> int:
        """Most requests in flight. llama-server computes a row differently when it batches requests of several
        slots (up to 0.075 in a probability on SmolLM2; alone, the same row every time and within 2e-4 of
        in-process), and a server's prompt cache decodes each request from what it holds: step-by-step rows
        (native and completions routes) are asked one at a time, runs one after another, unless --concurrency
        says otherwise. Asks nothing of the server (stats() of a run with nothing left to measure): the stepper as
        built by measure()."""
        return 1 if self._stepper is not None and self._stepper.sequential else self.settings.concurrency

    def stepper(self):
        """The step-by-step driver where --tokenizer is given and the server continues raw prompts, else None."""
        caps = self.capabilities()
        if self.tokenizer is None or self._stepper is not None:
            return self._stepper
        from deval.backends.stepper import Stepper
        from deval.backends.vocab import Vocab

        if caps.native:  # llama.cpp's native route: token-id prompts, rows up to the whole vocabulary
            self._stepper = Stepper(self, Vocab(self.tokenizer), caps.native, completion_url(self.settings.base_url),
                                    sequential=not self.settings.concurrency_given)
            return self._stepper
        if not caps.top_logprobs.get("completions"):
            raise BackendError(f"--tokenizer drives runs step by step on the completions route, which gave no "
                               f"logprobs at {redact(self.settings.base_url)}; drop --tokenizer")

        cap = caps.top_logprobs["completions"]
        top = cap if caps.full.get("completions") else min(cap, STEP_TOP)
        self._stepper = Stepper(self, Vocab(self.tokenizer), min(top, self.settings.top_logprobs)
                                if self.settings.top_given else top, sequential=not self.settings.concurrency_given)
        return self._stepper

    async def _run(self, transport: Transport, spec: RunSpec, route: str, top: int) -> list[Step]:
        task = spec.task
        if self._stepper is not None:
            return await self._stepper.run(transport, spec)
        if spec.mode == "sequence":
            choice = (await self._fetch(transport, route, self._body(spec, route, top, spec.seed), 1))[0]
            positions, flags = find_positions(choice, task.items, task.separator, spec.steps, task.matching)
            return self._steps(spec, [(choice, p) for p in positions] or [(choice, None)], flags)
        if self.capabilities().n and spec.steps > 1:
            choices = await self._split_n(transport, spec, route, top)
        else:
            bodies = [self._body(spec, route, top, spec.seed + 1_000_003 * t) for t in range(spec.steps)]
            choices = [c[0] for c in await asyncio.gather(*(self._fetch(transport, route, b, 1) for b in bodies))]
        found = [find_positions(c, task.items, task.separator, 1, task.matching) for c in choices[: spec.steps]]
        steps = self._steps(spec, [(c, pos[0] if pos else None) for c, (pos, _) in zip(choices, found)])
        # each answer's own walk flags (preamble, no-items-found, ...), as in sequence mode
        return [dataclasses.replace(s, flags=tuple(dict.fromkeys(s.flags + flags))) for s, (_, flags) in zip(steps, found)]

    async def _split_n(self, transport: Transport, spec: RunSpec, route: str, top: int) -> list[Choice]:
        """spec.steps choices in requests of at most the n the server accepts (llama-server: its slot count).

        A refused n is learned (the number a 'slot' message names, else half) and the rest asked in smaller
        requests; chunk c uses seed + N_SEED_STRIDE * c, so the first chunk is the unsplit request."""
        choices: list[Choice] = []
        chunk = 0
        while len(choices) < spec.steps:
            n = min(spec.steps - len(choices), self.n_limit or spec.steps)
            seed = spec.seed + N_SEED_STRIDE * chunk
            try:
                got = await self._fetch(transport, route, self._body(spec, route, top, seed, n=n), n)
            except FewerChoices as exc:
                self.n_limit = min(self.n_limit or n, exc.count)
                continue
            except Refused as exc:
                if n <= 1 or exc.status not in (400, 413, 422, 500):
                    raise
                self.n_limit = min(self.n_limit or n, n_from(exc.server_message, n))
                continue
            choices += got[:n]
            chunk += 1
        return choices

    def stats(self) -> dict:
        """What the transport went through, for the run files: requests, retries by reason, concurrency, n."""
        return {"requests": self.requests, "cache_hits": self.cache.hits, "retries": self.retries,
                "retry_reasons": dict(self.retry_reasons), "timeouts": self.timeouts,
                "concurrency": self.in_flight(), "concurrency_lowest": self.lowest_concurrency,
                "n_limit": self.n_limit, "server_filters": self.evidence.to_dict(),
                # the server's draw passed the check and made the free draws (None: not checked)
                "server_draws": self._stepper.server_draws if self._stepper is not None else None,
                # answers that generated a path's tail a text prompt would not reach (forced_prefix)
                "forced_prefixes": self._stepper.forced.asked if self._stepper is not None else 0}

    async def _produce(self, runs: Sequence[RunSpec], out: queue.Queue, handle: dict) -> None:
        handle["loop"], handle["task"] = asyncio.get_running_loop(), asyncio.current_task()
        route, top = self._route()
        most = self.in_flight()
        gate = asyncio.Semaphore(most)  # runs in progress: with one request in flight, one run after another, so
        limiter = Limiter(most)  # the server's prompt cache holds the run's own last prefix (the same schedule)
        async with self._client() as client:
            transport = self._transport(client, seed=runs[0].seed if runs else 0, limiter=limiter)

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
                await asyncio.gather(*tasks, return_exceptions=True)  # cancelled requests close their connections
                self.timeouts += transport.timeouts
                self.lowest_concurrency = min(self.lowest_concurrency, limiter.lowest)

    def measure(self, runs: Sequence[RunSpec]) -> Iterator[Step]:
        self._route()  # probe (and fail clearly) before any thread starts
        if any(spec.positions != "free" for spec in runs) and self.stepper() is None:
            raise ConfigError("--positions constrained needs an exact backend (local or mock) or a step-by-step "
                              "HTTP run (--tokenizer PATH.gguf); over plain HTTP deval measures free positions only")
        self.stepper()
        yield from stream(lambda out, handle: self._produce(runs, out, handle), "deval-openai")

    def generate(self, specs: Sequence[GenerateSpec]) -> Iterator[tuple[int, str]]:
        """Free text for each spec (deval.backends.openai_generate): (index, text) as each response arrives."""
        from deval.backends.openai_generate import produce

        yield from stream(lambda out, handle: produce(self, specs, out, handle), "deval-openai-generate")

    def close(self) -> None:
        self.cache.close()
        if self._stepper is not None:
            self._stepper.vocab.close()
