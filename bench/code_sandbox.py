"""Benchmark (not a test): the sandbox's cost on the 164 canonical HumanEval solutions.

Sandboxed (deval's Sandbox: bubblewrap namespaces, uid drop, limits) against the same programs run unsandboxed, each
in a plain subprocess (`python -I -S -B program.py`, the same interpreter flags), both parallel over the same number
of workers. Reports the wall time of each pass (median over --repeat, alternating the order) and the ratio
(goal <= 1.5x).

    python bench/code_sandbox.py [--workers N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deval.analyses.code import programs  # noqa: E402
from deval.analyses.code.problems import load_problems  # noqa: E402
from deval.analyses.code.sandbox import Sandbox  # noqa: E402


def canonical() -> list[str]:
    return [programs.program(p, programs.solution_source(p, p.canonical_solution)) for p in load_problems()]


def sandboxed(sources: list[str], workers: int) -> tuple[float, int]:
    box = Sandbox()
    start = time.perf_counter()
    passed = sum(o.passed for _, o in box.run_many(sources, workers))
    return time.perf_counter() - start, passed


def unsandboxed(sources: list[str], workers: int) -> tuple[float, int]:
    def one(source: str) -> bool:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "candidate.py"
            path.write_text(source)
            proc = subprocess.run([sys.executable, "-I", "-S", "-B", str(path)], capture_output=True, cwd=d,
                                  stdin=subprocess.DEVNULL, timeout=15)
            return proc.returncode == 0

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        passed = sum(pool.map(one, sources))
    return time.perf_counter() - start, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sources = canonical()
    box = Sandbox()
    print(f"sandbox: {box.describe()['mechanism']} · {len(sources)} programs · {args.workers} workers · "
          f"load average {os.getloadavg()[0]:.1f}")
    times = {"sandboxed": [], "unsandboxed": []}
    for r in range(args.repeat):
        order = [("sandboxed", sandboxed), ("unsandboxed", unsandboxed)]
        for name, fn in (order if r % 2 == 0 else order[::-1]):
            seconds, passed = fn(sources, args.workers)
            times[name].append(seconds)
            print(f"  {name:12s} {seconds:6.2f}s  {passed}/{len(sources)} passed")
    sb, plain = statistics.median(times["sandboxed"]), statistics.median(times["unsandboxed"])
    print(f"median: sandboxed {sb:.2f}s, unsandboxed {plain:.2f}s, ratio {sb / plain:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
