"""Run the same deval commands from two checkouts and compare their summary.json files (refactors keep numbers).

    python bench/same_numbers.py --before /path/to/old/checkout [--after .] [--quick] [--only NAME ...]

Each command runs with PYTHONPATH set to the checkout, writes its run directory under a temporary folder, and the
summaries are compared with the fields that legitimately differ (paths, times, versions) left out. Wall time and
item steps per second (records in steps.jsonl, for profiles) are printed for both checkouts: `--only
profile-local-30` is issue 17's speed check (the default profile of 30 runs on the embedded model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = {
    "profile-mock-d": ["profile", "--backend", "mock", "--model", "d", "--runs", "5"],
    "profile-mock-e": ["profile", "--backend", "mock", "--model", "e", "--runs", "5", "--task", "extreme"],
    "profile-local": ["profile", "--runs", "3", "--steps", "10"],
    "profile-local-30": ["profile", "--runs", "30"],
    "profile-local-30-constrained": ["profile", "--runs", "30", "--positions", "constrained"],
    "sweep-local": ["sweep", "--runs", "2", "--steps", "8", "--temperatures", "0.7,1.3", "--task", "flat"],
    "calibration-local": ["calibration", "--task", "vowels", "--samples", "5"],
    "diversity-local": ["diversity", "--task", "vowels", "--samples", "8"],
}
VOLATILE = {"run_dir", "path", "where", "created", "started", "finished", "elapsed_s", "seconds", "versions"}


def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def run(checkout: Path, args: list[str], out: Path) -> tuple[dict, float, int]:
    """The command's summary (volatile fields left out), its wall seconds and the step records it wrote."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    module = "deval.cli.main" if (checkout / "deval" / "cli" / "main.py").exists() else "deval.cli"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *args, "--out", str(out), "--json"], cwd=checkout,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{checkout}: deval {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    wall = time.perf_counter() - start
    steps = out / "steps.jsonl"
    records = len(steps.read_text().splitlines()) if steps.exists() else 0
    return strip(json.loads((out / "summary.json").read_text())), wall, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--quick", action="store_true", help="mock commands only")
    parser.add_argument("--only", action="append", choices=sorted(COMMANDS), help="run only these commands")
    args = parser.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, command in COMMANDS.items():
            if (args.quick and "mock" not in name) or (args.only and name not in args.only):
                continue
            a, wall_a, steps_a = run(args.before.resolve(), command, Path(tmp) / f"{name}-before")
            b, wall_b, steps_b = run(args.after.resolve(), command, Path(tmp) / f"{name}-after")
            same = json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
            failed += not same
            rates = (f"  {steps_a / wall_a:.1f} -> {steps_b / wall_b:.1f} item steps/s ({wall_a / wall_b:.2f}x)"
                     if steps_a and steps_b else "")
            print(f"{name:28s} {'identical' if same else 'DIFFERENT'}  {wall_a:.1f} s -> {wall_b:.1f} s{rates}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
