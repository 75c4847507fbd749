"""One POST with retries: backoff with jitter, Retry-After honoured, all within a time budget (never forever).

Retried: 408, 429, 5xx, timeouts, dropped connections, bodies that are not JSON (truncated), and responses the
caller's check rejects (e.g. logprobs missing once). Any other 4xx stops at once with the server's message, and so
does a 500 that is a request validation error (llama-cpp-python answers a bad field with 500). Each attempt's
timeout is cut to what is left of the budget, so the budget holds. Requests in flight are bounded by an adaptive
limit (Limiter): halved on a timeout, 429 or 503, grown by one per limit's worth of successes.
httpx is used directly (not the openai SDK): the SDK 3.x sends through httpx2, which hides the wire from
respx, and its own retry loop would sit under ours.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import httpx
import numpy as np
import orjson

from deval.backends.urls import redact
from deval.errors import BackendError, BackendUnavailable

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
OVERLOAD_STATUS = {429, 503, 529}  # the server says it is busy: fewer requests in flight
VALIDATION_MARKS = ("validation error", "validationerror")
MESSAGE_LIMIT = 400  # characters of a server's error message we quote


class Transient(Exception):
    """A failure worth retrying; retry_after is the server's own wait in seconds, if it said."""

    def __init__(self, reason: str, retry_after: float | None = None, connect: bool = False,
                 overload: bool = False):
        super().__init__(reason)
        self.retry_after = retry_after
        self.connect = connect  # no connection at all: retried only within the short connect budget
        self.overload = overload  # a timeout or a busy answer: the limiter backs off


class Limiter:
    """Requests in flight under an adaptive limit (AIMD): halved on overload, +1/limit per success, within [1, most]."""

    def __init__(self, most: int):
        self.most = max(1, int(most))
        self.limit = float(self.most)
        self.in_flight = 0
        self.lowest = self.most  # the smallest limit reached, for the run's record
        self._changed = asyncio.Condition()

    async def acquire(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < int(self.limit))
            self.in_flight += 1

    async def release(self, overload: bool | None) -> None:
        """overload None: the attempt says nothing about load (e.g. a refusal); False: it succeeded."""
        async with self._changed:
            self.in_flight -= 1
            if overload:
                self.limit = max(1.0, self.limit / 2.0)
                self.lowest = min(self.lowest, int(self.limit))
            elif overload is False:
                self.limit = min(float(self.most), self.limit + 1.0 / self.limit)
            self._changed.notify_all()


class NotAnAPI(BackendError):
    """The server answered a page (HTML), not JSON: the base URL does not point at an OpenAI-compatible API."""


class AuthFailed(BackendError):
    """401/403: the key is missing or refused; not retried, and not taken for a missing feature by the probe."""


class Refused(BackendError):
    """The server answered with a 4xx that retrying will not fix."""

    def __init__(self, message: str, status: int, server_message: str):
        super().__init__(message)
        self.status = status
        self.server_message = server_message


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how often to retry one request."""

    budget_s: float = 300.0  # wall time one request may take over all its attempts
    base_s: float = 0.5  # first backoff; doubles each attempt
    max_delay_s: float = 30.0
    max_attempts: int = 20
    connect_budget_s: float = 10.0  # a server that refuses connections is given this long to come up

    def delay(self, attempt: int, rng: np.random.Generator) -> float:
        """Equal jitter: half the exponential step fixed, half drawn."""
        step = min(self.max_delay_s, self.base_s * 2.0 ** attempt)
        return step / 2.0 + float(rng.uniform(0.0, step / 2.0))


def loads(raw: bytes):
    """A JSON body: orjson (3x the standard library on logprobs answers), the standard library where orjson
    refuses what it accepts (NaN, Infinity)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def server_message(response: httpx.Response) -> str:
    """The error text a server sent: error.message of the JSON body, else the raw text, shortened."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        data = None
    message = None
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
    if not isinstance(message, str):
        message = response.text
    message = " ".join(message.split())
    return message[:MESSAGE_LIMIT] + ("..." if len(message) > MESSAGE_LIMIT else "")


def refusal(response: httpx.Response, route: str, api_key_env: str) -> Refused:
    text = server_message(response)
    status = response.status_code
    if status >= 500:
        why = f"the server rejected the request (HTTP {status}: {text})"
    elif "logprob" in text.lower():
        why = f"the model refuses logprobs, which deval needs to read P_token (HTTP {status}: {text})"
    elif status in (401, 403):
        why = f"authentication failed (HTTP {status}: {text}); check ${api_key_env or 'the key variable'}"
    elif status == 404:
        why = f"not found (HTTP 404: {text}); check --base-url, --model and the route"
    else:
        why = f"HTTP {status}: {text}"
    return Refused(f"{route}: {why}", status, text)


class Transport:
    """POSTs JSON to one base URL through one shared async client."""

    def __init__(self, client: httpx.AsyncClient, policy: RetryPolicy, rng: np.random.Generator,
                 api_key_env: str = "", sleep: Callable[[float], Awaitable] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic, limiter: Limiter | None = None,
                 on_retry: Callable[[str], None] = lambda reason: None):
        self.client = client
        self.policy = policy
        self.rng = rng
        self.api_key_env = api_key_env
        self.sleep = sleep
        self.clock = clock
        self.limiter = limiter
        self.on_retry = on_retry  # told the reason of every retry as it happens (progress, run files)
        self.retries = 0
        self.timeouts = 0

    async def post(self, route: str, body: dict, check: Callable[[dict], None] = lambda data: None,
                   parse: Callable[[bytes], dict] = loads) -> tuple[dict, bytes]:
        """The parsed JSON answer to POST route and its raw bytes; check(data) may raise Transient to ask again;
        parse reads the body (a route may read a large answer lean: deval.backends.native.parse).

        The budget counts attempts and backoff, not the wait for a free slot under the limiter."""
        start = self.clock()
        queued = 0.0  # time spent waiting for a slot
        attempt = 0
        while True:
            try:
                if self.limiter is not None:
                    before = self.clock()
                    await self.limiter.acquire()
                    queued += self.clock() - before
                left = self.policy.budget_s - (self.clock() - start - queued)
                overload = None
                try:
                    result = await self._once(route, body, check, left, parse)
                    overload = False
                    return result
                except Transient as exc:
                    overload = exc.overload or None
                    raise
                finally:
                    if self.limiter is not None:
                        await self.limiter.release(overload)
            except Transient as exc:
                attempt += 1
                elapsed = self.clock() - start - queued
                wait = self.policy.delay(attempt - 1, self.rng)
                if exc.retry_after is not None:
                    wait = max(wait, exc.retry_after)
                budget = min(self.policy.budget_s, self.policy.connect_budget_s) if exc.connect else self.policy.budget_s
                if attempt >= self.policy.max_attempts or elapsed + wait > budget:
                    error = BackendUnavailable if exc.connect else BackendError
                    raise error(
                        f"{route}: gave up after {attempt} attempt{'s' * (attempt > 1)} in {elapsed:.1f}s "
                        f"(retry budget {budget:g}s; --retry-budget raises it): {exc}") from None
                self.retries += 1
                self.on_retry(str(exc))
                await self.sleep(wait)

    def _where(self, route: str) -> str:
        return redact(str(self.client.base_url).rstrip("/") + "/" + route)

    def _auth_failed(self, response: httpx.Response, route: str) -> AuthFailed:
        env = self.api_key_env or "the key's variable"
        sent = "authorization" in self.client.headers
        fix = (f"check that ${env} holds a valid key for this server" if sent else
               f"no key was sent: export the key as ${env} (or name its variable with --api-key-env)")
        return AuthFailed(f"{self._where(route)}: authentication failed (HTTP {response.status_code}: "
                          f"{server_message(response)}); {fix}")

    def _timeout(self, left: float):
        """The client's timeout, its read/write/pool parts cut to what is left of the budget."""
        base = self.client.timeout
        left = max(0.001, left)
        cut = lambda v: left if v is None else min(v, left)  # noqa: E731
        return httpx.Timeout(connect=cut(base.connect), read=cut(base.read), write=cut(base.write),
                             pool=cut(base.pool))

    async def _once(self, route: str, body: dict, check: Callable[[dict], None], left: float = math.inf,
                    parse: Callable[[bytes], dict] = loads) -> tuple[dict, bytes]:
        try:
            if math.isfinite(left):
                response = await self.client.post(route, json=body, timeout=self._timeout(left))
            else:
                response = await self.client.post(route, json=body)
        except httpx.TimeoutException as exc:
            self.timeouts += 1
            raise Transient(f"timed out ({type(exc).__name__})", overload=True) from None
        except httpx.ConnectError as exc:
            raise Transient(f"cannot connect ({exc}); is the server running at this --base-url?", connect=True) from None
        except httpx.TransportError as exc:
            raise Transient(f"connection failed ({type(exc).__name__}: {exc})") from None
        status = response.status_code
        if status >= 500 and any(m in server_message(response).lower() for m in VALIDATION_MARKS):
            raise refusal(response, route, self.api_key_env)  # a bad field: asking again cannot help
        if status in RETRY_STATUS or status >= 500:
            raise Transient(f"HTTP {status}: {server_message(response)}",
                            retry_after_seconds(response.headers.get("retry-after")),
                            overload=status in OVERLOAD_STATUS)
        if status in (401, 403):
            raise self._auth_failed(response, route)
        if status >= 400 and _is_html(response):
            raise NotAnAPI(f"{self._where(route)} answered HTTP {status} with an HTML page: this is not an "
                           "OpenAI-compatible API; check the base URL (it usually ends in /v1)")
        if status >= 400:
            raise refusal(response, route, self.api_key_env)
        try:
            data = parse(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if _is_html(response):
                raise NotAnAPI(f"{self._where(route)} answered an HTML page, not JSON: this is not an "
                               "OpenAI-compatible API; check the base URL (it usually ends in /v1, e.g. "
                               "http://127.0.0.1:8080/v1)") from None
            raise Transient(f"the body is not complete JSON ({len(response.content)} bytes)") from None
        check(data)
        return data, response.content


def _is_html(response: httpx.Response) -> bool:
    """A web page rather than an API answer (by content type, or by a body that opens with a tag)."""
    kind = response.headers.get("content-type", "").lower()
    return "html" in kind or response.content.lstrip()[:1] == b"<"
