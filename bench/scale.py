"""Memory and time of a long mock profile: peak RSS and seconds per step at N steps (issue 17: streams).

    python bench/scale.py [--steps 10000,100000] [--checkout .] [--render]

Each size runs `deval profile --backend mock --model d --task extreme` (10 runs of N/10 steps, more runs past
100,000 steps) in a fresh child process, which reports its own peak RSS (resource.getrusage ru_maxrss) and wall
time. Targets: a 100,000-step profile under 300 MB, and seconds per step flat as N grows (time linear in steps).
--render prints the text report instead of --json (it reads the first run of each task back).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

MAX_STEPS = 10_000  # deval's limit on --steps; past 10 runs of it, more runs
CHILD = """import resource, sys, time
sys.argv = ["deval", *sys.argv[1:]]
from deval.cli.main import app
start = time.perf_counter()
try:
    app()
except SystemExit as exc:
    assert not exc.code, exc.code
print("SCALE", time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def layout(n: int) -> tuple[int, int]:
    """(runs, steps per run) for n steps in all."""
    runs = max(10, -(-n // MAX_STEPS))
    return runs, max(1, n // runs)


def measure(checkout: Path, n: int, render: bool) -> dict:
    runs, steps = layout(n)
    with tempfile.TemporaryDirectory() as tmp:
        args = ["profile", "--backend", "mock", "--model", "d", "--task", "extreme", "--runs", str(runs),
                "--steps", str(steps), "--out", str(Path(tmp) / "run")] + ([] if render else ["--json"])
        proc = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=checkout, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(checkout), "COLUMNS": "100"})
        if proc.returncode != 0:
            raise SystemExit(f"deval {' '.join(args)} failed: {proc.stderr.strip()[-800:]}")
        seconds, rss_kb = proc.stderr.rsplit("SCALE", 1)[1].split()
    total = runs * steps
    return {"steps": total, "runs": runs, "seconds": round(float(seconds), 2),
            "us_per_step": round(float(seconds) / total * 1e6, 1), "peak_rss_mb": round(int(rss_kb) / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="10000,100000", help="comma-separated step counts")
    parser.add_argument("--checkout", type=Path, default=Path("."), help="the deval checkout to measure")
    parser.add_argument("--render", action="store_true", help="print the text report instead of --json")
    args = parser.parse_args()
    checkout = args.checkout.resolve()
    rows = [measure(checkout, int(n), args.render) for n in args.steps.split(",")]
    for row in rows:
        print(f"{row['steps']:>9} steps ({row['runs']} runs): {row['seconds']:>7.2f} s, "
              f"{row['us_per_step']:>6.1f} us/step, peak RSS {row['peak_rss_mb']:>7.1f} MB")
    if len(rows) > 1:
        growth = rows[-1]["us_per_step"] / rows[0]["us_per_step"]
        marginal = (rows[-1]["seconds"] - rows[0]["seconds"]) / (rows[-1]["steps"] - rows[0]["steps"]) * 1e6
        print(f"time per step at {rows[-1]['steps']} steps / at {rows[0]['steps']}: {growth:.2f} (1.0 = linear; "
              f"below 1 where start-up, imports and the summary's fixed costs spread over more steps); "
              f"marginal {marginal:.1f} us per added step")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
