"""Benchmark (not a test): the cost of one item step in deval's local backend against two references.

- floor: a bare llama-cpp-python loop that evaluates the same tokens deval fed (prompt once per run, then each
  step's new tokens) and reads the last row of logits; nothing else.
- route: what a user would otherwise write: create_completion(logprobs=20) with logits_all=True, generating
  the sequence and reading the top-20 at each token; cost per item position found in the output.

Usage: python bench/local_step.py [--task flat] [--runs 3] [--steps 30] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from llama_cpp import Llama

from deval.backend import RunSpec, run_seed
from deval.backends.local import LocalBackend
from deval.tasks import TaskCatalog


def deval_steps(backend: LocalBackend, specs: list[RunSpec]) -> tuple[float, list[list[list[int]]]]:
    """Seconds for deval to measure the runs, and the token chunks it fed at each step."""
    start = time.perf_counter()
    steps = list(backend.measure(specs))
    elapsed = time.perf_counter() - start
    separator = backend.tokenize(specs[0].task.separator)
    chunks = [[backend.tokenize(s.text) + separator for s in steps if s.run == spec.run] for spec in specs]
    return elapsed, chunks


def floor_steps(llm: Llama, prompt: list[int], chunks: list[list[list[int]]]) -> float:
    n_vocab = llm.n_vocab()
    start = time.perf_counter()
    for run in chunks:
        llm.reset()
        llm.eval(prompt)
        np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy()
        for chunk in run[:-1]:  # deval reads the distribution before each item; the last feed is not needed
            llm.eval(chunk)
            np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy()
    return time.perf_counter() - start


def route_steps(llm: Llama, prompt_text: str, items: tuple[str, ...], runs: int, steps: int) -> tuple[float, int]:
    """Seconds and item positions found when generating with create_completion(logprobs=20)."""
    found = 0
    start = time.perf_counter()
    for r in range(runs):
        out = llm.create_completion(prompt_text, max_tokens=steps * 3, logprobs=20, temperature=1.0, seed=r,
                                    top_k=0, top_p=1.0, min_p=0.0)
        tokens = out["choices"][0]["logprobs"]["tokens"]
        found += sum(1 for t in tokens if t.strip() in items)
    return time.perf_counter() - start, max(found, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", default="flat")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--gpu-layers", type=int, default=None)
    args = parser.parse_args()
    task = TaskCatalog.load().get(args.task)
    specs = [RunSpec(task=task, run=r, seed=run_seed(0, task.name, r), mode="sequence", steps=args.steps)
             for r in range(args.runs)]
    backend = LocalBackend(threads=args.threads, gpu_layers=args.gpu_layers)
    n = args.runs * args.steps
    list(backend.measure(specs[:1]))  # warm-up
    evals_before = backend.evals
    t_deval, chunks = deval_steps(backend, specs)
    decodes = backend.evals - evals_before
    prompt = backend.prompt_tokens(specs[0].prompt)
    prompt_text = backend.llm.detokenize(prompt, special=True).decode("utf-8", "replace")
    kwargs = dict(model_path=backend.model, n_ctx=backend.n_ctx, n_threads=args.threads,
                  n_gpu_layers=backend.gpu_layers, verbose=False)
    backend.close()
    bare = Llama(**kwargs)
    floor_steps(bare, prompt, chunks[:1])  # warm-up
    t_floor = floor_steps(bare, prompt, chunks)
    bare.close()
    full = Llama(logits_all=True, **kwargs)
    t_route, found = route_steps(full, prompt_text, task.items, args.runs, args.steps)
    full.close()
    rate = {"deval": n / t_deval, "floor": n / t_floor, "route": found / t_route}
    print(f"task {task.name}, {args.runs} runs x {args.steps} steps, threads {args.threads or 'default'}, "
          f"gpu layers {kwargs['n_gpu_layers']}; deval made {decodes} decode calls for {n} steps")
    for name, value in rate.items():
        print(f"  {name:6s} {value:8.1f} item steps/s")
    print(f"  deval / floor = {rate['deval'] / rate['floor']:.2f}   (goal >= 0.9)")
    print(f"  deval / route = {rate['deval'] / rate['route']:.2f}   (goal > 1)")


if __name__ == "__main__":
    main()
