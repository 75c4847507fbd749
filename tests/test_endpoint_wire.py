"""Issue 18 on the wire (respx): the probe and its cache, neutral sampler fields, n split, budget, limiter."""

import asyncio
import json
import math

import httpx
import numpy as np
import pytest
import respx

from deval.backends.http import Limiter, RetryPolicy, Transport
from deval.backends.logprobs import Alt, Choice, Token
from deval.backends.openai import OpenAIBackend
from deval.backends.probe import SCHEMA
from deval.backends.sampler_check import FLAG, run_evidence, server_filter_flags
from deval.core.protocol import RunSpec
from deval.core.sampling import Filters
from deval.core.tasks import TaskCatalog
from deval.errors import BackendError
from stubserver import response_for

URL = "http://10.0.0.9:8000/v1"
EXTENSIONS = {"top_k", "min_p", "repeat_penalty", "repetition_penalty"}


def spec(mode="sequence", steps=3):
    return RunSpec(task=TaskCatalog.load().get("extreme"), run=0, seed=77, mode=mode, steps=steps)


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=response_for(request.url.path, json.loads(request.content)))


def no_logprobs(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=response_for(request.url.path, json.loads(request.content), logprobs=False))


def backend(tmp_path, **options):
    options = {"base_url": URL, "api_key_env": "", "cache_dir": str(tmp_path / "cache"), "retry_base": 0.001,
               "retry_budget": 5.0} | options
    return OpenAIBackend(model=options.pop("model", "m"), preset=options.pop("preset", "openai"), **options)


def bodies(route):
    return [json.loads(c.request.content) for c in route.calls]


def mock_models():
    # a llama.cpp server is asked for its native route too (outside /v1): this one has none
    respx.post(URL.removesuffix("/v1") + "/completion").mock(return_value=httpx.Response(404, json={"error": "no"}))
    return respx.get(f"{URL}/models").mock(return_value=httpx.Response(200, json={"data": [{"id": "m"}]},
                                                                       headers={"server": "llama.cpp"}))


# -- the probe and its cache ------------------------------------------------------------------------------------

@respx.mock
def test_a_200_without_logprobs_during_the_probe_is_asked_again_and_the_answer_cached(tmp_path):
    mock_models()
    answers = iter([no_logprobs] * 2)
    chat = respx.post(f"{URL}/chat/completions").mock(side_effect=lambda r: next(answers, ok)(r))
    respx.post(f"{URL}/completions").mock(side_effect=ok)
    caps = backend(tmp_path).capabilities()
    assert caps.chat and caps.top_logprobs["chat"] == 28  # the stub's whole vocabulary
    assert json.loads((tmp_path / "cache" / "probes.json").read_text())  # cached once it worked
    sent = chat.call_count
    again = backend(tmp_path).capabilities()
    assert again == caps and chat.call_count == sent  # from the cache


@respx.mock
def test_a_probe_that_finds_no_logprobs_is_never_cached(tmp_path):
    mock_models()
    chat = respx.post(f"{URL}/chat/completions").mock(side_effect=no_logprobs)
    respx.post(f"{URL}/completions").mock(side_effect=no_logprobs)
    with pytest.raises(BackendError, match="returned no logprobs"):
        backend(tmp_path).describe()
    assert not (tmp_path / "cache" / "probes.json").exists()
    sent = chat.call_count
    with pytest.raises(BackendError):
        backend(tmp_path).describe()
    assert chat.call_count > sent  # probed again, not answered from a cached failure


@respx.mock
def test_a_failure_cached_by_an_older_deval_is_ignored(tmp_path):
    mock_models()
    old = OpenAIBackend(model="m", preset="openai", base_url=URL, api_key_env="", cache_dir=str(tmp_path / "cache"))
    from deval.backends.cache import endpoint_id

    from deval.backends.probe import ProbeCache, server_identity

    async def identity():
        async with httpx.AsyncClient(base_url=URL + "/") as client:
            return await server_identity(client)

    (tmp_path / "cache").mkdir(exist_ok=True)
    failure = {"chat": False, "completions": False, "top_logprobs": {"chat": 0, "completions": 0}, "keyed_by": {},
               "logprobs": "unknown", "n": False, "errors": {"chat": "no logprobs"}}
    limit = old.settings.probe_limit
    new_key = ProbeCache._key(URL, "m", asyncio.run(identity()))
    (tmp_path / "cache" / "probes.json").write_text(json.dumps(  # as deval 0.1 wrote it, and at today's key
        {endpoint_id(URL, "m"): {"base_url": URL, "model": "m", "asks": [20, 10, 5, 1], "capabilities": failure},
         new_key: {"base_url": URL, "model": "m", "limit": limit, "capabilities": failure}}))
    chat = respx.post(f"{URL}/chat/completions").mock(side_effect=ok)
    respx.post(f"{URL}/completions").mock(side_effect=ok)
    assert old.capabilities().chat and chat.call_count > 0
    stored = json.loads((tmp_path / "cache" / "probes.json").read_text())
    assert any(e.get("schema") == SCHEMA for e in stored.values())


@respx.mock
def test_401_is_raised_at_once_and_never_cached(tmp_path, monkeypatch):
    mock_models()
    monkeypatch.setenv("DEVAL_WIRE_KEY", "sk-wrong")
    chat = respx.post(f"{URL}/chat/completions").mock(return_value=httpx.Response(401, json={"error": "bad key"}))
    with pytest.raises(BackendError, match=r"authentication failed.*DEVAL_WIRE_KEY"):
        backend(tmp_path, api_key_env="DEVAL_WIRE_KEY").capabilities()
    assert chat.call_count == 1 and not (tmp_path / "cache" / "probes.json").exists()


# -- neutral sampler settings -----------------------------------------------------------------------------------

@respx.mock
def test_generic_openai_sends_the_neutral_extensions_a_llama_cpp_server_takes(tmp_path):
    mock_models()
    chat = respx.post(f"{URL}/chat/completions").mock(side_effect=ok)
    respx.post(f"{URL}/completions").mock(side_effect=ok)
    b = backend(tmp_path)
    steps = list(b.measure([spec()]))
    run = [x for x in bodies(chat) if x["max_tokens"] > 1]
    assert len(run) == 1
    assert run[0]["top_k"] == 0 and run[0]["min_p"] == 0.0 and run[0]["repeat_penalty"] == 1.0
    assert run[0]["top_p"] == 1.0 and run[0]["repetition_penalty"] == 1.0
    assert not any("server-sampler-unknown" in s.flags for s in steps)


def openai_proper(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    extra = sorted(set(body) & EXTENSIONS)
    if extra:
        return httpx.Response(400, json={"error": {"message": f"Unrecognized request argument supplied: {extra[0]}",
                                                   "type": "invalid_request_error"}})
    if body.get("top_logprobs", 0) > 20:
        return httpx.Response(400, json={"error": {"message": "Invalid 'top_logprobs': integer above maximum value. "
                                                              "Expected a value <= 20, but got 200 instead."}})
    return ok(request)


@respx.mock
def test_a_server_refusing_unknown_fields_gets_none_in_the_run_and_top_20(tmp_path):
    mock_models()
    chat = respx.post(f"{URL}/chat/completions").mock(side_effect=openai_proper)
    respx.post(f"{URL}/completions").mock(return_value=httpx.Response(404, json={"error": "chat model"}))
    b = backend(tmp_path)
    steps = list(b.measure([spec()]))
    caps = b.capabilities()
    assert caps.sampler == "standard-only" and caps.sampling == {"top_p": 1.0} and caps.top_logprobs["chat"] == 20
    run = [x for x in bodies(chat) if x["max_tokens"] > 1]
    assert len(run) == 1 and not set(run[0]) & EXTENSIONS and run[0]["top_logprobs"] == 20
    assert "server-sampler-unknown" in steps[0].flags  # not api.openai.com: its defaults may filter


@respx.mock
def test_top_k_off_is_sent_as_the_server_understands_it(tmp_path):
    mock_models()

    def old_vllm(request):
        if json.loads(request.content).get("top_k") == 0:
            return httpx.Response(400, json={"message": "top_k must be -1 (disable), or at least 1, got 0."})
        return ok(request)

    chat = respx.post(f"{URL}/chat/completions").mock(side_effect=old_vllm)
    respx.post(f"{URL}/completions").mock(side_effect=old_vllm)
    b = backend(tmp_path, preset="vllm", base_url=URL)
    list(b.measure([spec()]))
    assert [x["top_k"] for x in bodies(chat) if x["max_tokens"] > 1] == [-1]


@respx.mock
def test_a_validation_error_sent_as_500_is_not_retried(tmp_path):
    mock_models()

    def llama_cpp_python(request):
        if json.loads(request.content).get("top_k") == -1:
            message = "1 validation error: top_k Input should be greater than or equal to 0"
            return httpx.Response(500, json={"error": {"message": message, "type": "internal_server_error"}})
        return ok(request)

    chat = respx.post(f"{URL}/chat/completions").mock(side_effect=llama_cpp_python)
    b = backend(tmp_path, no_probe=True)
    run = RunSpec(task=TaskCatalog.load().get("extreme"), run=0, seed=1, mode="sequence", steps=2,
                  filters=Filters(top_k=-1))
    with pytest.raises(BackendError, match="validation error"):
        list(b.measure([run]))
    assert chat.call_count == 1


# -- n split ----------------------------------------------------------------------------------------------------

@respx.mock
def test_n_above_the_slot_count_is_split_into_requests_the_server_accepts(tmp_path):
    def llama_server(request):
        n = json.loads(request.content).get("n", 1)
        if n > 2:
            return httpx.Response(400, json={"error": {"code": 400, "message": f"n ({n}) exceeds the number of "
                                                       "slots (2); restart the server with a larger -np",
                                                       "type": "invalid_request_error"}})
        return ok(request)

    chat = respx.post(f"{URL}/chat/completions").mock(side_effect=llama_server)
    b = backend(tmp_path, preset="llama-server", no_probe=True)
    steps = list(b.measure([spec(mode="independent", steps=5)]))
    sent = bodies(chat)
    assert [x.get("n", 1) for x in sent] == [5, 2, 2, 1]
    assert [x["seed"] for x in sent[1:]] == [77, 77 + 7919, 77 + 2 * 7919]  # the first chunk is seed-compatible
    assert [s.step for s in steps] == [0, 1, 2, 3, 4] and b.n_limit == 2 and b.stats()["n_limit"] == 2


@respx.mock
def test_a_server_ignoring_n_gets_one_request_per_step(tmp_path):
    def one_choice(request):
        body = json.loads(request.content)
        return httpx.Response(200, json=response_for(request.url.path, {**body, "n": 1}))

    chat = respx.post(f"{URL}/chat/completions").mock(side_effect=one_choice)
    b = backend(tmp_path, preset="llama-server", no_probe=True)
    steps = list(b.measure([spec(mode="independent", steps=3)]))
    assert [x.get("n", 1) for x in bodies(chat)] == [3, 1, 1, 1] and len(steps) == 3 and b.retries == 0


# -- budget, limiter, retries counted -----------------------------------------------------------------------------

def test_every_attempt_timeout_fits_in_what_is_left_of_the_budget():
    now = [0.0]

    async def sleep(s):
        now[0] += s

    def timeout_then_ok(request):
        t = request.extensions["timeout"]
        seen.append(t["read"])
        now[0] += t["read"]  # the attempt uses its whole timeout
        raise httpx.ReadTimeout("slow")

    seen = []

    async def go():
        async with httpx.AsyncClient(base_url="http://s.test/v1/", timeout=httpx.Timeout(40.0)) as client:
            t = Transport(client, RetryPolicy(budget_s=100, base_s=1.0), np.random.default_rng(0), sleep=sleep,
                          clock=lambda: now[0])
            await t.post("chat/completions", {})

    with respx.mock:
        respx.post("http://s.test/v1/chat/completions").mock(side_effect=timeout_then_ok)
        with pytest.raises(BackendError, match="gave up"):
            asyncio.run(go())
    assert seen[0] == 40.0 and min(seen) < 40.0 and now[0] <= 100.0 + 1e-6


def test_the_limiter_halves_on_overload_and_grows_back_one_per_window():
    async def go():
        lim = Limiter(16)
        for _ in range(3):
            await lim.acquire()
            await lim.release(True)
        assert lim.limit == 2.0 and lim.lowest == 2
        for _ in range(2):
            await lim.acquire()
            await lim.release(False)
        assert 2.0 < lim.limit < 4.0
        await lim.acquire()
        await lim.release(None)  # a refusal says nothing about load
        return lim.limit

    assert asyncio.run(go()) < 4.0


@respx.mock
def test_timeouts_lower_the_concurrency_and_retries_are_counted_by_reason(tmp_path):
    calls = {"n": 0}

    def flaky(request):
        calls["n"] += 1
        if calls["n"] <= 3:
            raise httpx.ReadTimeout("slow")
        return ok(request)

    respx.post(f"{URL}/chat/completions").mock(side_effect=flaky)
    b = backend(tmp_path, preset="llama-server", no_probe=True, concurrency=8)
    runs = [RunSpec(task=TaskCatalog.load().get("extreme"), run=r, seed=r, mode="sequence", steps=2) for r in range(4)]
    steps = list(b.measure(runs))
    stats = b.stats()
    assert len([s for s in steps if s.final]) == 4
    assert stats["retries"] == 3 and stats["timeouts"] == 3 and stats["concurrency_lowest"] <= 2
    assert sum(stats["retry_reasons"].values()) == 3


# -- the server-filter evidence -----------------------------------------------------------------------------------

def token(probs, pick):
    top = tuple(Alt(f"id:{i}", b"x", math.log(p)) for i, p in enumerate(probs))
    return Token(f"id:{pick}", b"x", math.log(probs[pick]), top)


def test_draws_that_never_leave_the_default_filters_set_are_flagged():
    probs = [0.5] + [0.5 / 60] * 60  # min-p 0.05 keeps only the first token: 50% of draws would leave it
    inside = Choice("", tuple(token(probs, 0) for _ in range(10)), "length", "id")
    assert server_filter_flags(run_evidence([inside])) == (FLAG,)
    outside = Choice("", tuple(token(probs, 0 if i else 5) for i in range(10)), "length", "id")
    assert server_filter_flags(run_evidence([outside])) == ()
    few = Choice("", tuple(token(probs, 0) for _ in range(3)), "length", "id")
    assert server_filter_flags(run_evidence([few])) == ()  # 1/8 by chance: no evidence yet
