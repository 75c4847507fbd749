"""Benchmark (not a test): how much llama.cpp's next-token row at one prefix moves with the decode schedule.

The same tokens decoded as one batch, split into two batches at several points, or the answer one token at a time
after the prompt (what a server's prompt cache or a generation loop does) give rows that differ in the last bits
and, on a small quantized model, by much more. Prefixes are the embedded SmolLM2's own answers to a task's prompt
(drawn with a seeded generator); prints the largest difference in a probability between schedules, per prefix,
with flash attention on and off (issue 11: why a server's rows cannot follow in-process rows exactly).

    python bench/schedule_spread.py [--task flat] [--prefixes 20] [--tokens 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deval.backends.local import LocalBackend, embedded_model_path, open_llama  # noqa: E402
from deval.core.protocol import RunSpec, run_seed  # noqa: E402
from deval.core.sampling import draw  # noqa: E402
from deval.core.tasks import TaskCatalog  # noqa: E402


def prefixes(task_name: str, count: int, tokens: int, seed: int) -> list[list[int]]:
    """The task's prompt followed by answers the model draws itself (T=1), cut at random lengths."""
    local = LocalBackend(threads=1)
    task = TaskCatalog.load().get(task_name)
    rng = np.random.default_rng(seed)
    out = []
    try:
        spec = RunSpec(task=task, run=0, seed=run_seed(seed, task.name, 0), mode="sequence", steps=1)
        prompt = list(local.answer_tokens(spec))
        eog = set(local.eog_tokens())
        for _ in range(count):
            seq = list(prompt)
            for _ in range(int(rng.integers(1, tokens + 1))):
                tok = draw(local.next_logprobs(seq), rng)  # deval's own draw (core.sampling), as a run's
                if tok in eog:
                    break
                seq.append(tok)
            out.append((len(prompt), seq))
    finally:
        local.close()
    return out


def schedules(prompt_len: int, seq: list[int]) -> list[list[list[int]]]:
    """Ways to decode seq, each a list of batches: one batch, two batches at a few cuts, the answer token by token."""
    out = [[seq]]
    for cut in sorted({prompt_len, (prompt_len + len(seq)) // 2, len(seq) - 1}):
        if 0 < cut < len(seq):
            out.append([seq[:cut], seq[cut:]])
    if len(seq) > prompt_len + 1:
        out.append([seq[:prompt_len]] + [[t] for t in seq[prompt_len:]])
    return out


def spread(llm, prompt_len: int, seq: list[int]) -> float:
    """The largest difference in a probability of the row after seq between its schedules."""
    rows = []
    for batches in schedules(prompt_len, seq):
        llm.reset()
        for batch in batches:
            llm.eval(batch)
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        rows.append(np.exp(logits - np.logaddexp.reduce(logits)))
    r = np.array(rows)
    return float(np.max(r.max(axis=0) - r.min(axis=0)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="flat")
    parser.add_argument("--prefixes", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=60, help="longest answer drawn after the prompt")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cases = prefixes(args.task, args.prefixes, args.tokens, args.seed)
    print(f"{args.task}: {len(cases)} prefixes of {min(len(s) for _, s in cases)}-{max(len(s) for _, s in cases)} "
          "tokens; largest |difference| in a probability between decode schedules")
    for fa in (True, False):
        llm = open_llama(embedded_model_path(), threads=1, n_ctx=2048, verbose=False, logits_all=True, flash_attn=fa)
        d = np.array([spread(llm, n, s) for n, s in cases])
        llm.close()
        print(f"  flash attention {'on ' if fa else 'off'}: median {np.median(d):.4f}  p90 {np.quantile(d, 0.9):.4f}  "
              f"max {d.max():.4f}")


if __name__ == "__main__":
    main()
