"""Free-text generation on every backend: the wire body (respx), scripted mock text, the local seeded sampler."""

import json

import httpx
import pytest
import respx

from conftest import needs_model
from deval.backends.mock import MockBackend
from deval.backends.openai import OpenAIBackend
from deval.core.protocol import GenerateSpec, cut_at_stop
from deval.core.sampling import Filters
from deval.errors import ConfigError

URL = "https://api.example.test/v1"


def http_backend(tmp_path, monkeypatch, **options):
    monkeypatch.setenv("DEVAL_TEST_KEY", "sk-test-0123456789")
    options = {"base_url": URL, "api_key_env": "DEVAL_TEST_KEY", "no_probe": True,
               "cache_dir": str(tmp_path / "cache")} | options
    return OpenAIBackend(model="gpt-test", preset=options.pop("preset", "openai"), **options)


def chat_answer(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    text = f"seed {body['seed']}: " + body["messages"][0]["content"]
    return httpx.Response(200, json={"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})


def test_cut_at_stop_drops_the_first_stop_string():
    assert cut_at_stop("a\nb```c", ("```", "\nb")) == ("a", True)
    assert cut_at_stop("abc", ("x",)) == ("abc", False)
    assert cut_at_stop("abc", ()) == ("abc", False)


@respx.mock
def test_chat_generation_sends_sampling_settings_and_caches(tmp_path, monkeypatch):
    route = respx.post(f"{URL}/chat/completions").mock(side_effect=chat_answer)
    b = http_backend(tmp_path, monkeypatch)
    specs = [GenerateSpec(f"prompt {i}", max_tokens=50, temperature=0.7, seed=100 + i, stop=("\n```",),
                          filters=Filters(top_p=0.9)) for i in range(5)]
    got = dict(b.generate(specs))
    assert got == {i: f"seed {100 + i}: prompt {i}" for i in range(5)}
    bodies = sorted((json.loads(c.request.content) for c in route.calls), key=lambda x: x["seed"])
    assert len(bodies) == 5
    assert bodies[0] == {"model": "gpt-test", "max_tokens": 50, "temperature": 0.7, "seed": 100, "stop": ["\n```"],
                         "messages": [{"role": "user", "content": "prompt 0"}], "top_p": 0.9}
    again = dict(b.generate(specs))  # every answer is cached: nothing new over the wire
    assert again == got and route.call_count == 5
    b.close()


@respx.mock
def test_raw_generation_uses_completions_with_the_presets_neutral_sampler(tmp_path, monkeypatch):
    route = respx.post("http://127.0.0.1:8080/v1/completions").mock(
        return_value=httpx.Response(200, json={"choices": [{"index": 0, "text": "    return a + b\n"}]}))
    b = http_backend(tmp_path, monkeypatch, preset="llama-server", base_url=None, no_cache=True)
    got = list(b.generate([GenerateSpec("def add(a, b):\n", max_tokens=20, temperature=0.2, seed=2**40 + 3,
                                        raw=True)]))
    assert got == [(0, "    return a + b\n")]
    body = json.loads(route.calls[0].request.content)
    assert body["prompt"] == "def add(a, b):\n" and "messages" not in body and "stop" not in body
    assert body["top_k"] == 0 and body["top_p"] == 1.0 and body["min_p"] == 0.0 and body["repeat_penalty"] == 1.0
    assert body["seed"] == (2**40 + 3) % 2**31


@respx.mock
def test_malformed_generation_answers_are_retried(tmp_path, monkeypatch):
    route = respx.post(f"{URL}/chat/completions").mock(side_effect=[
        httpx.Response(200, json={"nothing": 1}),
        httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}]})])
    b = http_backend(tmp_path, monkeypatch, retry_base=0.001, no_cache=True)
    assert list(b.generate([GenerateSpec("p", 5, 1.0, 1)])) == [(0, "ok")] and route.call_count == 2


def test_mock_generation_is_scripted_and_seeded():
    b = MockBackend("e", script={"q": ["first```tail", "second", "third"]})
    specs = [GenerateSpec("q", 100, 1.0, s, stop=("```",)) for s in range(30)]
    texts = dict(b.generate(specs))
    assert set(texts.values()) == {"first", "second", "third"}
    assert dict(b.generate(specs)) == texts  # same seeds, same texts
    assert list(b.generate([GenerateSpec("q", 100, 0.0, 7)])) == [(0, "first```tail")]  # greedy: the first
    other = list(b.generate([GenerateSpec("unscripted", 100, 1.0, 1)]))[0][1]
    assert other and other == list(b.generate([GenerateSpec("unscripted", 100, 1.0, 1)]))[0][1]


def test_mock_script_from_a_file(tmp_path):
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"p": "only"}))
    assert list(MockBackend("d", script=path).generate([GenerateSpec("p", 10, 1.0, 3)])) == [(0, "only")]
    path.write_text("[1, 2")
    with pytest.raises(ConfigError, match="mock script"):
        MockBackend("d", script=path)


@needs_model
@pytest.mark.model
def test_local_generation_is_seeded_and_stops():
    from deval.backends.local import LocalBackend

    b = LocalBackend()
    try:
        specs = [GenerateSpec("Write a Python function that adds two numbers.", 24, 0.8, s) for s in (1, 2, 1)]
        specs.append(GenerateSpec("def add(a, b):\n", 40, 1.0, 5, stop=("\n",), raw=True))
        got = dict(b.generate(specs))
        assert got[0] == got[2] != got[1]  # the text depends only on the spec, not on what ran before
        assert "\n" not in got[3]
        assert len(b.llm.tokenize(got[0].encode(), add_bos=False)) <= 24 + 2
        with pytest.raises(ConfigError):
            list(b.generate([GenerateSpec("x", 0, 1.0, 1)]))
    finally:
        b.close()
