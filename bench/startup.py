"""Start-up time of the CLI: best of N wall times of `deval --help` (and `deval tasks`), against bare Python.

    python bench/startup.py [--n 10] [--checkout .]

Target (issue 17): `deval --help` under 0.3 s on an idle machine. The floor is `python3 -c pass` on the same
machine (interpreter and site start-up), printed alongside so a busy machine's figures can be read.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("numpy", "scipy", "llama_cpp", "openai", "matplotlib", "rapidfuzz", "httpx")


def best_of(argv: list[str], n: int, env: dict, cwd: Path) -> float:
    """The shortest of n wall times (seconds) of a subprocess: the one least disturbed by other load."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def heavy_loaded(args: list[str], env: dict, cwd: Path) -> list[str]:
    """The heavy modules in sys.modules after the CLI ran with these arguments."""
    code = ("import sys; sys.argv = ['deval', *sys.argv[1:]]\nfrom deval.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True)
    return proc.stderr.strip().splitlines()[-1].split() if proc.stderr.strip() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="runs per command (best of n)")
    parser.add_argument("--checkout", type=Path, default=Path("."), help="the deval checkout to time")
    args = parser.parse_args()
    checkout = args.checkout.resolve()  # also the working directory: python -m puts it first on sys.path
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    floor = best_of([sys.executable, "-c", "pass"], args.n, env, checkout)
    print(f"python3 -c pass          best of {args.n}: {floor:.3f} s (interpreter floor)")
    for cli_args in (["--help"], ["tasks"]):
        t = best_of([sys.executable, "-m", "deval.cli.main", *cli_args], args.n, env, checkout)
        heavy = heavy_loaded(cli_args, env, checkout)
        print(f"deval {' '.join(cli_args):<18} best of {args.n}: {t:.3f} s (+{t - floor:.3f} s over the floor); "
              f"heavy modules loaded: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
