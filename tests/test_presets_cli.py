"""Presets resolve to the openai backend; CLI options and errors; the response cache file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deval import backends as registry
from deval.backends.cache import ResponseCache, request_key
from deval.backends.openai import OpenAIBackend
from deval.backends.presets import load_presets, preset_from_dict
from deval.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("openai", "vllm", "llama-server", "llama-cpp-python", "tgi", "together", "ollama")


def test_every_known_server_has_a_valid_preset():
    presets = load_presets()
    assert set(PRESETS) <= set(presets)
    assert presets["tgi"].top_logprobs_cap == 5 and presets["vllm"].top_logprobs_cap == 20
    assert dict(presets["llama-cpp-python"].sampling)["repeat_penalty"] == 1.0


@pytest.mark.parametrize("name", PRESETS)
def test_presets_resolve_to_the_openai_backend_with_their_settings(name, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("TOGETHER_API_KEY", "k")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert registry.backend_class(name) is OpenAIBackend
    b = registry.create(name, "m", no_probe=True, cache_dir=str(tmp_path))
    preset = load_presets()[name]
    assert b.name == name and b.settings.base_url == preset.base_url and b.settings.route == preset.route


def test_bad_preset_fields_are_config_errors():
    good = {"name": "x", "base_url": "http://h/v1", "route": "chat", "top_logprobs_cap": 5}
    preset_from_dict(good, "x.toml")
    for bad in ({"route": "native"}, {"top_logprobs_cap": 0}, {"base_url": "h/v1"}, {"colour": "red"},
                {"logprobs": "cooked"}, {"sampling": {"top_k": "all"}}):
        with pytest.raises(ConfigError, match="x.toml: field"):
            preset_from_dict(good | bad, "x.toml")


def test_backend_options_are_checked():
    for options in ({"route": "native"}, {"concurrency": 0}, {"base_url": "ftp://x"}, {"top_logprobs": 0}):
        with pytest.raises(ConfigError):
            OpenAIBackend(model="m", preset="vllm", no_probe=True, no_cache=True, **options)
    with pytest.raises(ConfigError, match="--model"):
        OpenAIBackend(model=None, preset="vllm")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "deval.cli.main", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


def test_cli_lists_presets_and_rejects_http_options_elsewhere():
    listed = cli("backends")
    assert listed.returncode == 0 and all(p in listed.stdout for p in PRESETS)
    bad = cli("profile", "--backend", "mock", "--model", "d", "--concurrency", "4", "--runs", "1")
    assert bad.returncode == 2 and "--concurrency does not apply to the mock backend" in bad.stderr
    down = cli("probe", "--backend", "vllm", "--model", "m", "--base-url", "http://127.0.0.1:9/v1",
               "--retry-budget", "1", "--cache-dir", "/tmp/deval-test-unused")
    assert down.returncode == 2 and "is the server running" in down.stderr and "Traceback" not in down.stderr


def test_cache_survives_a_torn_last_line_and_pretty_printed_bodies(tmp_path):
    cache = ResponseCache(tmp_path, "http://h/v1", "m")
    k1, k2 = request_key("http://h/v1", "chat", {"a": 1}), request_key("http://h/v1", "chat", {"a": 2})
    assert k1 != k2 and k1 == request_key("http://h/v1", "chat", {"a": 1})
    cache.put(k1, b'{\n  "choices": [\n "x\\ny"]\n}\n')
    cache.close()
    with cache.path.open("ab") as fh:
        fh.write(b'{"key":"' + k2.encode() + b'","response":{"cho')  # a crash mid-write
    again = ResponseCache(tmp_path, "http://h/v1", "m")
    assert again.get(k1) == {"choices": ["x\ny"]} and again.get(k2) is None
    again.put(k2, b'{"ok": 1}')
    assert again.get(k2) == {"ok": 1}
    again.close()
    lines = cache.path.read_bytes().split(b"\n")
    assert all(json.loads(l) for l in lines[:1])
    assert ResponseCache(tmp_path, "http://h/v1", "m").get(k2) == {"ok": 1}
    assert ResponseCache(None, "http://h/v1", "m").get(k1) is None


@pytest.mark.parametrize("url, why", [("http://[::1", "Invalid IPv6 URL"), ("http://127.0.0.1:99999/v1", "Port out of range"),
                                      ("http://alice:pw@h:abc/v1?key=S", "Port could not be cast"),
                                      ("http:///v1", "no host")])
def test_a_malformed_base_url_is_one_line_without_a_traceback(url, why):
    from conftest import one_line_error

    proc = cli("profile", "--backend", "openai", "--model", "m", "--base-url", url, "--runs", "1", "--no-cache")
    line = one_line_error(proc)
    assert "is not a valid URL" in line and why in line
    assert "pw" not in line and "key=S" not in line
