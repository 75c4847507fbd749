"""A profile killed with SIGKILL mid-run and resumed gives the same summary as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stubserver import StubServer

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--backend", "llama-server", "--model", "stub", "--task", "extreme", "--runs", "8", "--steps", "5",
        "--concurrency", "1", "--seed", "11", "--json"]


def command(*args):
    return [sys.executable, "-m", "deval.cli.main", "profile", *args]


def env():
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def finished_runs(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.endswith("}") and json.loads(line)["final"])


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    with StubServer(delay=0.25) as stub:
        common = ["--base-url", stub.url]
        clean = subprocess.run(command(*ARGS, *common, "--cache-dir", str(tmp_path / "c1"), "--out",
                                       str(tmp_path / "clean")), capture_output=True, text=True, env=env(), timeout=120)
        assert clean.returncode == 0, clean.stderr
        run = tmp_path / "killed"
        proc = subprocess.Popen(command(*ARGS, *common, "--cache-dir", str(tmp_path / "c2"), "--out", str(run)),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env())
        try:
            deadline = time.monotonic() + 60
            while finished_runs(run / "steps.jsonl") < 2 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.02)
            assert proc.poll() is None, "the run ended before it could be killed"
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        done = finished_runs(run / "steps.jsonl")
        assert 2 <= done < 8 and not (run / "summary.json").exists()
        resumed = subprocess.run([sys.executable, "-m", "deval.cli.main", "profile", "--resume", str(run), "--json"],
                                 capture_output=True, text=True, env=env(), timeout=120)
        assert resumed.returncode == 0, resumed.stderr
    resumed_summary, clean_summary = json.loads(resumed.stdout), json.loads(clean.stdout)
    assert resumed_summary.pop("run_dir") == str(run) and clean_summary.pop("run_dir")  # --json names its run dir
    assert resumed_summary == clean_summary
    records = [json.loads(l) for l in (run / "steps.jsonl").read_text().splitlines()]
    keys = [(r["run"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)) == 8 * 5
