"""The backend against a stub server on 127.0.0.1: faults, cache, resume, probe, refusals, the API key."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deval.backends.openai import OpenAIBackend
from deval.errors import BackendError
from deval.analyses.profile import ProfileConfig, manifest, run_profile
from deval.runs.store import RunDir, dumps
from deval.core.tasks import TaskCatalog
from stubserver import StubServer

ROOT = Path(__file__).resolve().parent.parent
FAULTS = ["429", "500", "503", "reset", "timeout", "truncated", "nologprobs"]


def make_backend(url, cache, **options):
    options = {"base_url": url, "cache_dir": str(cache), "no_probe": True, "retry_base": 0.01, "timeout": 1.0,
               "retry_budget": 30.0, "concurrency": 4} | options
    return OpenAIBackend(model="stub", preset="llama-server", **options)


def profile(url, out, cache, runs=6, tasks=("extreme", "flat"), steps=5, **options):
    engine = make_backend(url, cache, **options)
    catalog = TaskCatalog.load()
    config = ProfileConfig(backend="llama-server", model="stub", tasks=tuple(catalog.get(t) for t in tasks),
                           runs=runs, steps=steps, seed=3)
    run_dir = RunDir.create(out, manifest(config, engine))
    try:
        return run_profile(config, engine, run_dir), engine, run_dir
    finally:
        engine.close()


def test_faults_are_retried_and_the_summary_equals_a_fault_free_run(tmp_path):
    with StubServer() as clean:
        expected, _, _ = profile(clean.url, tmp_path / "clean", tmp_path / "c1")
    with StubServer(faults=FAULTS) as faulty:
        got, engine, run_dir = profile(faulty.url, tmp_path / "faulty", tmp_path / "c2")
        assert not faulty.faults  # every fault was served
    assert dumps(got) == dumps(expected)
    assert engine.retries >= len(FAULTS)
    for step in run_dir.steps():  # every item measured, or flagged where the top-k did not show it
        assert len(step.probs) in (4, 9)
        assert not step.missing or "missing-items" in step.flags


def test_a_cached_rerun_sends_nothing_and_gives_the_same_summary(tmp_path):
    with StubServer() as stub:
        first, engine, _ = profile(stub.url, tmp_path / "a", tmp_path / "cache")
        served = stub.served
        assert engine.requests == served == 12  # one request per run in sequence mode
        again, engine, _ = profile(stub.url, tmp_path / "b", tmp_path / "cache")
        assert stub.served == served and engine.requests == 0 and engine.cache.hits == 12
    assert dumps(again) == dumps(first)


def test_resume_after_an_interruption_finishes_only_what_is_missing(tmp_path):
    with StubServer() as stub:
        expected, _, _ = profile(stub.url, tmp_path / "clean", tmp_path / "c1", tasks=("extreme",))
        engine = make_backend(stub.url, tmp_path / "c2", concurrency=1)
        config = ProfileConfig(backend="llama-server", model="stub", tasks=(TaskCatalog.load().get("extreme"),),
                               runs=6, steps=5, seed=3)
        run_dir = RunDir.create(tmp_path / "run", manifest(config, engine))
        seen = []

        def interrupt(step):
            seen.append(step)
            if len(seen) == 12:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_profile(config, engine, run_dir, on_step=interrupt)
        engine.close()
        engine = make_backend(stub.url, tmp_path / "c2")
        summary = run_profile(config, engine, RunDir.open(tmp_path / "run"))
        engine.close()
        # runs 0 and 1 were written and are not asked for again; run 2's response had arrived: the cache has it
        assert engine.requests + engine.cache.hits == 4 and engine.cache.hits >= 1
    assert dumps(summary) == dumps(expected)
    records = [json.loads(l) for l in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    keys = [(r["task"], r["run"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)) == 30


def test_probe_on_the_stub_and_its_cache(tmp_path):
    with StubServer() as stub:
        engine = make_backend(stub.url, tmp_path / "cache", no_probe=False)
        caps = engine.capabilities()
        assert caps.chat and caps.completions and caps.logprobs == "raw" and caps.n
        assert caps.keyed_by == {"chat": "id", "completions": "id"} and caps.top_logprobs["chat"] == 28
        served = stub.served
        again = make_backend(stub.url, tmp_path / "cache", no_probe=False).capabilities()
        # cached per (base URL, model, server): a second backend only asks the server who it is (GET models)
        assert again == caps and [r["method"] for r in stub.requests[served:]] == ["GET"]


def test_an_endpoint_without_logprobs_is_a_clear_error(tmp_path):
    with StubServer(faults=["nologprobs"] * 40) as stub:
        engine = make_backend(stub.url, tmp_path / "cache", no_probe=False)
        with pytest.raises(BackendError, match="returned no logprobs .* deval needs logprobs"):
            engine.describe()


def test_a_refusal_stops_the_run_with_the_server_message(tmp_path):
    with StubServer(faults=["refuse"]) as stub:
        with pytest.raises(BackendError, match="refuses logprobs.*does not support logprobs"):
            profile(stub.url, tmp_path / "r", tmp_path / "c", runs=2, tasks=("extreme",), concurrency=1)


def cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "deval.cli.main", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, cwd=ROOT, **kw)


def test_the_api_key_never_reaches_a_file_or_a_log(tmp_path):
    canary = "sk-canary-7f3a9c1e5b"
    env = {"DEVAL_TEST_KEY": canary}
    with StubServer(faults=["429", "500"], retry_after="0") as stub:
        ok = cli("profile", "--backend", "openai", "--base-url", stub.url, "--model", "stub", "--api-key-env",
                 "DEVAL_TEST_KEY", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                 "--task", "extreme", "--runs", "2", "--steps", "3", env=env)
        assert ok.returncode == 0, ok.stderr
        assert all(r["headers"].get("authorization") == f"Bearer {canary}" for r in stub.requests)
    with StubServer(faults=["refuse"]) as stub:  # an error path too
        bad = cli("profile", "--backend", "openai", "--base-url", stub.url, "--model", "stub", "--api-key-env",
                  "DEVAL_TEST_KEY", "--cache-dir", str(tmp_path / "cache2"), "--out", str(tmp_path / "run2"),
                  "--no-probe", "--task", "extreme", "--runs", "1", env=env)
        assert bad.returncode == 1 and "refuses logprobs" in bad.stderr and "Traceback" not in bad.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "steps.jsonl" for p in files) and any(p.name.startswith("responses-") for p in files)
    for path in files:
        assert canary not in path.read_text(errors="replace"), path
    for text in (ok.stdout, ok.stderr, bad.stdout, bad.stderr):
        assert canary not in text


def test_credentials_in_the_base_url_never_reach_a_file_and_a_resume_asks_for_the_url(tmp_path):
    from conftest import one_line_error

    with StubServer() as stub:
        secret_url = stub.url.replace("//", "//alice:hunter2@") + "?key=QSECRET"
        ok = cli("profile", "--backend", "openai", "--base-url", secret_url, "--model", "stub",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run"),
                 "--task", "extreme", "--runs", "2", "--steps", "3")
        assert ok.returncode == 0, ok.stderr
        # the query goes with every request (not glued to the path), user:password as basic auth
        assert stub.requests and all(r["path"].endswith(("completions?key=QSECRET", "models?key=QSECRET"))
                                     for r in stub.requests)
        assert any(r["path"] == "/v1/chat/completions?key=QSECRET" for r in stub.requests)
        assert all(r["headers"].get("authorization", "").startswith("Basic ") for r in stub.requests)
        resumed = cli("profile", "--resume", str(tmp_path / "run"))
    assert "pass --base-url again" in one_line_error(resumed)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"manifest.json", "probes.json", "steps.jsonl"} <= names
    for path in files:
        text = path.read_text(errors="replace")
        for secret in ("alice", "hunter2", "QSECRET"):
            assert secret not in text, (secret, path)
    for text in (ok.stdout, ok.stderr, resumed.stderr):
        assert "hunter2" not in text and "QSECRET" not in text
    stored = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert stored["config"]["backend_options"]["base_url"] == stub.url.replace("//", "//***@") + "?key=***"
    assert stored["backend"]["base_url"] == stored["config"]["backend_options"]["base_url"]


def test_a_sweep_over_http_at_two_temperatures_end_to_end_and_its_resume(tmp_path):
    from conftest import one_line_error

    out, cache = tmp_path / "sweep", tmp_path / "cache"
    with StubServer() as stub:
        url = stub.url.replace("//", "//alice:hunter2@")
        args = ("--cache-dir", str(cache), "--concurrency", "2", "--retry-budget", "30", "--top-logprobs", "5")
        ok = cli("sweep", "--backend", "llama-server", "--base-url", url, "--model", "stub", "--temperatures", "0.5,1",
                 "--task", "extreme", "--runs", "2", "--steps", "3", "--out", str(out), "--json", *args)
        assert ok.returncode == 0, ok.stderr
        bodies = [r["body"] for r in stub.requests if r["body"].get("max_tokens", 0) > 2]  # not the probe's
        assert {b["temperature"] for b in bodies} == {0.5, 1.0} and {b["top_logprobs"] for b in bodies} == {5}
        served = stub.served
        lost = cli("sweep", "--resume", str(out))
        resumed = cli("sweep", "--resume", str(out), "--base-url", url, "--json")
        assert resumed.returncode == 0, resumed.stderr
        assert stub.served == served  # everything was measured: nothing is asked again
    assert "pass --base-url again" in one_line_error(lost)
    summary = json.loads(ok.stdout)
    assert summary["temperatures"] == [0.5, 1.0] and json.loads(resumed.stdout) == summary
    rows = summary["tasks"]["extreme"]["rows"]
    e = [r["measured"]["e_score"]["mean"] for r in rows]
    assert len(e) == 2 and e[0] != e[1]  # the raw logprobs are tempered by deval at T=0.5
    for sub in ("T0.5", "T1"):
        stored = json.loads((out / sub / "manifest.json").read_text())
        assert stored["backend"]["name"] == "llama-server" and stored["backend"]["top_logprobs"] == 5
        assert stored["config"]["backend_options"]["base_url"] == stub.url.replace("//", "//***@")
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert "hunter2" not in path.read_text(errors="replace"), path
