"""How honest is `deval compare`'s difference interval? Pairs of mock runs of the same model with different seeds
(true difference 0): the share of pairs whose 95% Welch interval excludes 0 (should be about 5%), per metric.

    PYTHONPATH=. python bench/compare_coverage.py [--pairs 200] [--runs 10] [--model e] [--task flat]
"""

from __future__ import annotations

import argparse

import numpy as np

from deval.analyses.compare import METRICS, per_run_values, welch
from deval.analyses.profile import ProfileConfig
from deval.backends.mock import MockBackend
from deval.core.tasks import TaskCatalog


def values(model: str, task, runs: int, seed: int) -> dict:
    config = ProfileConfig(backend="mock", model=model, tasks=(task,), runs=runs, seed=seed)
    steps = list(MockBackend(model).measure(config.run_specs(task)))
    return per_run_values(task, steps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=200)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--model", default="e")
    ap.add_argument("--task", default="flat")
    a = ap.parse_args()
    task = TaskCatalog.load([]).get(a.task)
    miss = {k: 0 for k in METRICS}
    counted = {k: 0 for k in METRICS}
    for i in range(a.pairs):
        x, y = values(a.model, task, a.runs, 2 * i), values(a.model, task, a.runs, 2 * i + 1)
        for k in METRICS:
            d = welch(x[k], y[k])
            if d["ci"][0] is None:  # fewer than two runs on a side: no interval
                continue
            counted[k] += 1  # an exact difference (both sides constant) misses when it is not 0
            miss[k] += not (d["ci"][0] <= 0 <= d["ci"][1])
    print(f"mock {a.model}, task {a.task}, {a.runs} runs a side, {a.pairs} seed pairs (true difference 0):")
    for k in METRICS:
        n = counted[k]
        rate = miss[k] / n if n else float("nan")
        se = np.sqrt(0.05 * 0.95 / n) if n else float("nan")
        print(f"  {k:12s} interval excludes 0 in {miss[k]:4d}/{n:4d} pairs = {rate:.3f} (nominal 0.050 ± {2 * se:.3f})")


if __name__ == "__main__":
    main()
