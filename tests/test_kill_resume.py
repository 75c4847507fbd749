"""A profile killed with SIGKILL at any point and resumed gives the same summary as an uninterrupted one, with no
record duplicated or lost: before the first record, mid-run (mid-line: a torn record), and while the summary is
being written. tests/kill_points.py holds the run at the exact point; the kill is a real SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stubserver import StubServer

ROOT = Path(__file__).resolve().parent.parent
RUNS, STEPS = 8, 5
ARGS = ["--backend", "llama-server", "--model", "stub", "--task", "extreme", "--runs", str(RUNS), "--steps",
        str(STEPS), "--concurrency", "1", "--seed", "11", "--json"]


def command(*args):
    return [sys.executable, "-m", "deval.cli.main", "profile", *args]


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def finished_runs(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.endswith("}") and json.loads(line)["final"])


@pytest.fixture(scope="module")
def stub():
    with StubServer(delay=0.05) as s:
        yield s


@pytest.fixture(scope="module")
def clean(stub, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clean")
    proc = subprocess.run(command(*ARGS, "--base-url", stub.url, "--cache-dir", str(tmp / "c"), "--out",
                                  str(tmp / "run")), capture_output=True, text=True, env=env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary.pop("run_dir")  # --json names its run directory; summary.json does not
    return summary


def resume_and_check(run: Path, clean: dict) -> None:
    resumed = subprocess.run(command("--resume", str(run)), capture_output=True, text=True, env=env(),
                             timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "summary.json").read_text()) == json.loads(json.dumps(clean))
    records = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    keys = [(r["run"], r["step"]) for r in records]
    assert sorted(keys) == [(r, s) for r in range(RUNS) for s in range(STEPS)]  # none lost, none twice


def test_sigkill_mid_run_by_timing_then_resume(stub, clean, tmp_path):
    """A kill at a moment chosen by the clock (after two finished runs), as a user's Ctrl-\\ or the OOM killer."""
    run = tmp_path / "killed"
    proc = subprocess.Popen(command(*ARGS, "--base-url", stub.url, "--cache-dir", str(tmp_path / "c"), "--out",
                                    str(run)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
    try:
        deadline = time.monotonic() + 60
        while finished_runs(run / "steps.jsonl") < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    done = finished_runs(run / "steps.jsonl")
    assert 2 <= done < RUNS and not (run / "summary.json").exists()
    resume_and_check(run, clean)


@pytest.mark.parametrize("point", ["first", "mid", "summary"])
def test_sigkill_at_a_point_then_resume(point, stub, clean, tmp_path):
    run, marker = tmp_path / "killed", tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "kill_points.py"), point, str(marker), "profile",
                             *ARGS, "--base-url", stub.url, "--cache-dir", str(tmp_path / "c"), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    try:
        deadline = time.monotonic() + 90
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "never reached the point"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    text = (run / "steps.jsonl").read_text()
    assert not (run / "summary.json").exists()
    if point == "first":
        assert text == ""
    elif point == "mid":
        assert not text.endswith("\n") and finished_runs(run / "steps.jsonl") == 10 // STEPS  # a torn last line
    else:
        assert (run / "summary.json.tmp").exists() and finished_runs(run / "steps.jsonl") == RUNS
    resume_and_check(run, clean)
