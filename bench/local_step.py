"""Benchmark (not a test): the cost of one item step in deval's local backend against two references.

- floor: a bare llama-cpp-python loop that evaluates the same tokens deval fed (prompt once per run, then each
  step's new tokens) and reads the last row of logits; nothing else. Runs use constrained positions, so the
  tokens fed are known from the steps.
- route: what a user would otherwise write: create_completion(logprobs=20) with logits_all=True, generating
  the sequence and reading the top-20 at each token; cost per item position found in the output.

Each method runs --repeat times, interleaved, and the best time counts (wall clock and process CPU time; with
one llama.cpp thread, CPU time is robust to other load on the machine).

deval runs with its default batch (all runs in one decode, the prompt decoded once and copied to each run) unless
--batch R is given; --batch 1 still decodes the prompt once per profile.

Usage: python bench/local_step.py [--task flat] [--runs 3] [--steps 30] [--repeat 3] [--threads N] [--batch R]
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import numpy as np

from deval.core.protocol import RunSpec, run_seed
from deval.backends.local import LocalBackend, open_llama
from llama_cpp import Llama  # annotations
from deval.core.tasks import TaskCatalog


@contextmanager
def timed(times: dict, name: str):
    """Keep the best (wall, cpu) seconds seen for `name`."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    best = times.get(name, (float("inf"), float("inf")))
    times[name] = (min(best[0], wall), min(best[1], cpu))


def deval_chunks(backend: LocalBackend, specs: list[RunSpec]) -> list[list[list[int]]]:
    """Measure the runs with deval; return the token chunks it fed at each step."""
    steps = list(backend.measure(specs))
    separator = backend.tokenize(specs[0].task.separator)
    return [[backend.tokenize(s.text) + separator for s in steps if s.run == spec.run] for spec in specs]


def floor_steps(llm: Llama, prompt: list[int], chunks: list[list[list[int]]]) -> None:
    n_vocab = llm.n_vocab()
    for run in chunks:
        llm.reset()
        llm.eval(prompt)
        np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy()
        for chunk in run[:-1]:  # deval reads the distribution before each item; the last feed is not needed
            llm.eval(chunk)
            np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy()


def route_steps(llm: Llama, prompt_text: str, items: tuple[str, ...], runs: int, steps: int) -> int:
    """Generate with create_completion(logprobs=20); return the item positions found in the output."""
    found = 0
    for r in range(runs):
        out = llm.create_completion(prompt_text, max_tokens=steps * 3, logprobs=20, temperature=1.0, seed=r,
                                    top_k=0, top_p=1.0, min_p=0.0)
        tokens = out["choices"][0]["logprobs"]["tokens"]
        found += sum(1 for t in tokens if t.strip() in items)
    return max(found, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="flat")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--gpu-layers", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args()
    task = TaskCatalog.load().get(args.task)
    specs = [RunSpec(task=task, run=r, seed=run_seed(0, task.name, r), mode="sequence", steps=args.steps,
                     positions="constrained")
             for r in range(args.runs)]
    backend = LocalBackend(threads=args.threads, gpu_layers=args.gpu_layers, batch=args.batch)
    kwargs = dict(n_ctx=backend.n_ctx, threads=args.threads,
                  n_gpu_layers=backend.gpu_layers, verbose=False)
    bare, full = open_llama(backend.model, **kwargs), open_llama(backend.model, logits_all=True, **kwargs)
    prompt = backend.prompt_tokens(specs[0].prompt)
    prompt_text = backend.llm.detokenize(prompt, special=True).decode("utf-8", "replace")
    chunks = deval_chunks(backend, specs)  # warm-up, and the tokens the floor replays
    evals = backend.evals
    deval_chunks(backend, specs)
    decodes = backend.evals - evals
    times: dict[str, tuple[float, float]] = {}
    found = 0
    for _ in range(args.repeat):
        with timed(times, "deval"):
            deval_chunks(backend, specs)
        with timed(times, "floor"):
            floor_steps(bare, prompt, chunks)
        with timed(times, "route"):
            found = route_steps(full, prompt_text, task.items, args.runs, args.steps)
    for thing in (backend, bare, full):
        thing.close()
    n = args.runs * args.steps
    counts = {"deval": n, "floor": n, "route": found}
    print(f"task {task.name}, {args.runs} runs x {args.steps} steps, best of {args.repeat}, threads "
          f"{args.threads or 'default'}, batch {args.batch or 'default'}, gpu layers {kwargs['n_gpu_layers']}; deval: {decodes} decode calls for "
          f"{n} steps; route found {found} item positions")
    print(f"  {'':6s} {'steps/s (wall)':>15s} {'steps/s (cpu)':>15s}")
    rate = {k: (counts[k] / w, counts[k] / c) for k, (w, c) in times.items()}
    for name, (w, c) in rate.items():
        print(f"  {name:6s} {w:15.1f} {c:15.1f}")
    for other, goal in (("floor", ">= 0.9"), ("route", "> 1")):
        print(f"  deval / {other} = {rate['deval'][0] / rate[other][0]:.2f} wall, "
              f"{rate['deval'][1] / rate[other][1]:.2f} cpu   (goal {goal})")


if __name__ == "__main__":
    main()
