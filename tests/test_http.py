"""What goes over the wire (respx), and the retry rules: backoff, Retry-After, budget, 4xx stops."""

import asyncio
import json

import httpx
import numpy as np
import pytest
import respx

from deval.core.protocol import RunSpec
from deval.backends.http import RetryPolicy, Transient, Transport, loads, retry_after_seconds
from deval.backends.openai import OpenAIBackend
from deval.errors import BackendError, BackendUnavailable, ConfigError
from deval.core.tasks import TaskCatalog
from stubserver import response_for

URL = "https://api.example.test/v1"
KEY = "sk-test-0123456789"


def spec(mode="sequence", steps=3, temperature=1.0):
    task = TaskCatalog.load().get("extreme")
    return RunSpec(task=task, run=0, seed=12345, mode=mode, steps=steps, temperature=temperature)


def answer(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json=response_for(request.url.path, json.loads(request.content)))


def backend(tmp_path, monkeypatch, **options):
    monkeypatch.setenv("DEVAL_TEST_KEY", KEY)
    options = {"base_url": URL, "api_key_env": "DEVAL_TEST_KEY", "no_probe": True,
               "cache_dir": str(tmp_path / "cache")} | options
    return OpenAIBackend(model=options.pop("model", "gpt-test"), preset=options.pop("preset", "openai"), **options)


@respx.mock
def test_chat_request_route_body_and_auth_header(tmp_path, monkeypatch):
    route = respx.post(f"{URL}/chat/completions").mock(side_effect=answer)
    b = backend(tmp_path, monkeypatch)
    steps = list(b.measure([spec()]))
    assert route.call_count == 1  # sequence mode: one request per run
    request = route.calls[0].request
    assert request.headers["authorization"] == f"Bearer {KEY}"
    body = json.loads(request.content)
    assert body["model"] == "gpt-test" and body["logprobs"] is True and body["top_logprobs"] == 20
    assert body["messages"] == [{"role": "user", "content": spec().prompt}]
    assert body["seed"] == 12345 and body["temperature"] == 1.0 and body["max_tokens"] >= 3
    assert "top_k" not in body and "n" not in body  # OpenAI rejects sampler extensions: none are sent
    assert len(steps) == 3 and steps[-1].final and not any(s.final for s in steps[:-1])


@respx.mock
def test_completions_route_and_preset_sampling_values(tmp_path, monkeypatch):
    route = respx.post("http://127.0.0.1:8080/v1/completions").mock(side_effect=answer)
    b = backend(tmp_path, monkeypatch, preset="llama-server", base_url=None, route="completions", top_logprobs=7)
    list(b.measure([spec()]))
    body = json.loads(route.calls[0].request.content)
    assert body["prompt"].startswith(spec().prompt) and body["logprobs"] == 7 and "messages" not in body
    assert body["top_k"] == 0 and body["top_p"] == 1.0 and body["min_p"] == 0.0 and body["repeat_penalty"] == 1.0


@respx.mock
def test_a_query_in_the_base_url_goes_with_every_request(tmp_path, monkeypatch):
    route = respx.post(f"{URL}/chat/completions").mock(side_effect=answer)
    b = backend(tmp_path, monkeypatch, base_url=URL + "/?api-version=2024-06-01")
    list(b.measure([spec()]))
    url = route.calls[0].request.url
    assert url.path == "/v1/chat/completions" and url.params["api-version"] == "2024-06-01"


@respx.mock
def test_no_auth_header_without_a_key(tmp_path, monkeypatch):
    route = respx.post(f"{URL}/chat/completions").mock(side_effect=answer)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    b = backend(tmp_path, monkeypatch, api_key_env="NO_SUCH_KEY_VAR")
    list(b.measure([spec()]))
    assert "authorization" not in route.calls[0].request.headers


@respx.mock
def test_openai_base_url_env_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    route = respx.post("http://127.0.0.1:9999/v1/chat/completions").mock(side_effect=answer)
    b = OpenAIBackend(model="m", no_probe=True, cache_dir=str(tmp_path))
    list(b.measure([spec()]))
    assert route.call_count == 1 and route.calls[0].request.headers["authorization"] == f"Bearer {KEY}"


def test_openai_without_key_is_a_clear_config_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match=r"\$OPENAI_API_KEY"):
        OpenAIBackend(model="gpt-4o-mini", no_probe=True, no_cache=True)


@respx.mock
def test_independent_mode_uses_n_when_the_server_supports_it(tmp_path, monkeypatch):
    route = respx.post(f"{URL}/chat/completions").mock(side_effect=answer)
    b = backend(tmp_path, monkeypatch)  # the openai preset says n works
    steps = list(b.measure([spec(mode="independent", steps=4)]))
    assert route.call_count == 1 and json.loads(route.calls[0].request.content)["n"] == 4
    assert [s.step for s in steps] == [0, 1, 2, 3]


@respx.mock
def test_independent_mode_without_n_is_one_request_per_step(tmp_path, monkeypatch):
    route = respx.post("http://127.0.0.1:8000/v1/chat/completions").mock(side_effect=answer)
    b = backend(tmp_path, monkeypatch, preset="llama-cpp-python", base_url=None)
    steps = list(b.measure([spec(mode="independent", steps=4)]))
    seeds = {json.loads(c.request.content)["seed"] for c in route.calls}
    assert route.call_count == 4 and len(seeds) == 4 and len(steps) == 4


# -- the transport's retry rules, with a fake clock ------------------------------------------------------------

class FakeTime:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    async def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self):
        return self.now


def post(responses, policy=RetryPolicy(budget_s=60, base_s=0.5), check=lambda d: None):
    fake = FakeTime()

    async def go():
        async with httpx.AsyncClient(base_url="http://s.test/v1/") as client:
            t = Transport(client, policy, np.random.default_rng(0), api_key_env="K", sleep=fake.sleep, clock=fake.clock)
            return (await t.post("chat/completions", {"x": 1}, check))[0]

    with respx.mock:
        route = respx.post("http://s.test/v1/chat/completions").mock(side_effect=responses)
        try:
            return asyncio.run(go()), fake, route
        except Exception as exc:
            exc.fake, exc.route = fake, route
            raise


def test_429_retry_after_is_honoured():
    data, fake, route = post([httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(200, json={"ok": 1})])
    assert data == {"ok": 1} and route.call_count == 2 and fake.sleeps[0] >= 7


def test_5xx_resets_timeouts_and_truncated_json_are_retried_with_growing_jittered_backoff():
    responses = [httpx.Response(500), httpx.Response(503), httpx.ReadError("reset"), httpx.ReadTimeout("slow"),
                 httpx.Response(200, content=b'{"choices": [{"ind'), httpx.Response(200, json={"ok": 1})]
    data, fake, route = post(responses)
    assert data == {"ok": 1} and route.call_count == 6
    policy = RetryPolicy(budget_s=60, base_s=0.5)
    for attempt, wait in enumerate(fake.sleeps):
        step = min(policy.max_delay_s, policy.base_s * 2 ** attempt)
        assert step / 2 <= wait <= step


def test_a_check_rejecting_the_body_is_retried():
    calls = []

    def check(data):
        calls.append(data)
        if "choices" not in data:
            raise Transient("logprobs missing")

    data, _, route = post([httpx.Response(200, json={"nothing": 1}), httpx.Response(200, json={"choices": []})],
                          check=check)
    assert data == {"choices": []} and len(calls) == 2


def test_retries_stop_at_the_time_budget():
    with pytest.raises(BackendError, match="gave up after") as info:
        post([httpx.Response(503)] * 100, policy=RetryPolicy(budget_s=10, base_s=1.0))
    assert sum(info.value.fake.sleeps) <= 10
    assert info.value.route.call_count < 100


def test_retry_after_beyond_the_budget_gives_up_at_once():
    with pytest.raises(BackendError, match="429") as info:
        post([httpx.Response(429, headers={"Retry-After": "3600"})] * 3, policy=RetryPolicy(budget_s=60))
    assert info.value.route.call_count == 1


def test_connection_refused_gets_only_the_short_connect_budget():
    with pytest.raises(BackendUnavailable, match="is the server running"):
        post([httpx.ConnectError("refused")] * 100, policy=RetryPolicy(budget_s=300, connect_budget_s=5))


def test_other_4xx_stop_at_once_with_the_server_message():
    with pytest.raises(BackendError, match="HTTP 422: temperature must be <= 2") as info:
        post([httpx.Response(422, json={"error": {"message": "temperature must be <= 2"}})])
    assert info.value.route.call_count == 1


def test_a_model_refusing_logprobs_gets_a_clear_error():
    refusal = httpx.Response(400, json={"error": {"message": "logprobs are not supported with reasoning models"}})
    with pytest.raises(BackendError, match="refuses logprobs"):
        post([refusal])


def test_auth_failure_names_the_variable():
    with pytest.raises(BackendError, match=r"authentication failed.*\$K"):
        post([httpx.Response(401, json={"error": "bad key"})])


def test_retry_after_forms():
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_redact_masks_user_password_query_values_and_fragment_and_never_raises():
    from deval.backends.urls import redact

    assert redact("http://alice:hunter2@h:8000/v1?key=S1&api-version=2024&flag#frag") == \
        "http://***@h:8000/v1?key=***&api-version=***&***#***"
    assert redact("https://h/v1") == "https://h/v1"
    assert redact("http://u:p@w@[::1") == "http://***@[::1"  # does not parse: masked all the same
    assert redact("http://h:99999/v1?token=T") == "http://h:99999/v1?token=***"
    assert redact("u:p@h/v1") == "***@h/v1"


def test_a_redacted_base_url_asks_for_the_full_url_again():
    with pytest.raises(ConfigError, match=r"masked .* pass --base-url again"):
        OpenAIBackend(model="m", preset="vllm", base_url="http://***@h/v1?key=***", no_probe=True, no_cache=True)


def test_json_bodies_read_fast_still_read_nan_and_infinity_and_refuse_a_torn_body():
    import math

    assert loads(b'{"logprob": -0.25, "id": 3}') == {"logprob": -0.25, "id": 3}
    assert math.isnan(loads(b'{"a": NaN}')["a"]) and loads(b"[-Infinity]") == [-math.inf]  # Python servers write these
    with pytest.raises(json.JSONDecodeError):
        loads(b'{"choices": [')
