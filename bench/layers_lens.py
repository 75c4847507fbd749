"""Benchmark (not a test): a profile through the logit lens (`deval layers`) against the same profile without it.

Both sides measure the same runs (same prompts, positions, draws) on the same model file: the plain local
backend's measure() against LensBackend.measure_layers(), which also captures every layer at the item positions
and applies the final norm and unembedding to each. Loading the model and reading the lens head (dequantised and
cached per model file, see deval/backends/lens_head.py) are timed apart and not counted per profile. Each side
runs --repeat times, interleaved; the best wall-clock and process CPU time count (CPU time covers llama.cpp's and
BLAS's threads and is the steadier number on a shared machine). Goal: lens <= 3x the plain profile.

Usage: python bench/layers_lens.py [--model PATH.gguf] [--task extreme] [--runs 10] [--steps N] [--repeat 1]
       [--threads N]
"""

from __future__ import annotations

import argparse
import time

from deval.backends.lens import LensBackend, model_path
from deval.backends.lens_head import read_head
from deval.backends.local import LocalBackend
from deval.core.protocol import RunSpec, run_seed
from deval.core.tasks import TaskCatalog


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--task", default="extreme")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    task = TaskCatalog.load().get(a.task)
    steps = a.steps or task.steps
    specs = [RunSpec(task=task, run=r, seed=run_seed(0, task.name, r), mode=task.mode, steps=steps)
             for r in range(a.runs)]
    path = model_path(a.model)
    t = clock()
    head = read_head(path)
    print(f"lens head of {path.name}: {head.arch}, {head.n_layer} layers, {head.weight_name} {head.weight_type} "
          f"{head.weight.shape}, read in {since(t)[0]:.1f} s (cached after the first read)")
    plain = LocalBackend(str(path), threads=a.threads)
    lens = LensBackend(str(path), head=head, threads=a.threads)
    best = {"plain": (float("inf"),) * 2, "lens": (float("inf"),) * 2}
    checks: list[float] = []
    try:
        for _ in range(a.repeat):
            t = clock()
            own = list(plain.measure(specs))
            best["plain"] = tuple(map(min, best["plain"], since(t)))
            t = clock()
            pairs = list(lens.measure_layers(specs))
            best["lens"] = tuple(map(min, best["lens"], since(t)))
            checks += [layer.check for _, layer in pairs]
            assert [s.sampled for s in own] == [s.sampled for s, _ in pairs], "the lens changed the draws"
    finally:
        plain.close()
        lens.close()
    n = a.runs * steps
    print(f"{a.runs} runs x {steps} steps of {task.name} ({n} item positions), best of {a.repeat}:")
    for name, (wall, cpu) in best.items():
        print(f"  {name:5s}  wall {wall:8.1f} s ({1000 * wall / n:7.1f} ms/step)   cpu {cpu:8.1f} s "
              f"({1000 * cpu / n:7.1f} ms/step)")
    print(f"  lens / plain: wall {best['lens'][0] / best['plain'][0]:.2f}x, cpu {best['lens'][1] / best['plain'][1]:.2f}x"
          f" (goal <= 3x); last-layer check max {max(checks):.1e}")


if __name__ == "__main__":
    main()
