"""Benchmark (not a test): a local profile on a busy machine against the same profile on an idle one (issue 17).

Runs `deval profile` on the embedded model (a fixed, small workload) with nothing else running, then with
--busy processes spinning on the CPU (pure Python loops, as another user's job would), and prints item steps per
second for both and their ratio. The goal on this 2-core machine with two busy processes: at least 0.25 of the idle
rate (deval's share of the CPU is then about a half; llama.cpp's threads must not spin against the other jobs).

    python bench/busy.py [--runs 10] [--steps 10] [--busy 2] [--threads N] [--repeat 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def profile_rate(args, out: Path) -> tuple[float, int]:
    """Wall seconds of one `deval profile` run, and the item steps it measured."""
    cmd = [sys.executable, "-m", "deval.cli.main", "profile", "--runs", str(args.runs), "--steps", str(args.steps),
           "--positions", "constrained", "--json", "--out", str(out)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    return wall, len((out / "steps.jsonl").read_text().splitlines())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    idle, busy = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):  # interleaved: idle, busy, idle, busy
            wall, steps = profile_rate(args, Path(tmp) / f"idle{i}")
            idle.append(steps / wall)
            stop = multiprocessing.Event()
            hogs = [multiprocessing.Process(target=spin, args=(stop,)) for _ in range(args.busy)]
            for h in hogs:
                h.start()
            try:
                wall, steps = profile_rate(args, Path(tmp) / f"busy{i}")
            finally:
                stop.set()
                for h in hogs:
                    h.join()
            busy.append(steps / wall)
    best_idle, best_busy = max(idle), max(busy)
    print(f"profile {args.runs} runs x {args.steps} steps x 2 tasks (constrained), threads {args.threads or 'default'}, "
          f"best of {args.repeat}")
    print(f"  idle:            {best_idle:7.1f} item steps/s")
    print(f"  {args.busy} busy processes: {best_busy:7.1f} item steps/s")
    print(f"  busy / idle = {best_busy / best_idle:.2f}   (goal >= 0.25)")


if __name__ == "__main__":
    main()
