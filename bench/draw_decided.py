"""Benchmark (not a test): how often a top-k row decides deval's draw, along the embedded model's own runs.

Over HTTP a step-by-step run on a server whose draw is not deval's (it failed the check in
deval.backends.native_route) asks a top-k row first and the whole vocabulary only where the top k cannot decide
the draw (deval.backends.native.decided_draw: the local inverse CDF in token-id order, with the unseen mass
placed anywhere). A server that passes the check draws itself, with the draw's seed. Walks runs of each task in-process (seeded as profile runs, flash attention on, float32
log-softmax as llama-server computes it) and prints, per k, the share of draws left undecided and the mean mass
outside the top k (issue 11: why whole-vocabulary rows, 4.7 MB each, would be needed for about a quarter of
draws).

    python bench/draw_decided.py [--task flat --task extreme] [--runs 8] [--tokens 60]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deval.backends import native  # noqa: E402
from deval.backends.local import embedded_model_path, open_llama  # noqa: E402
from deval.backends.vocab import Vocab  # noqa: E402
from deval.core.protocol import RunSpec, run_seed  # noqa: E402
from deval.core.sampling import draw_at, draw_seed, seed_uniform  # noqa: E402
from deval.core.tasks import TaskCatalog  # noqa: E402

KS = (1000, 4000, 8000, 16000, 32000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", action="append", default=[])
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=60, help="most tokens drawn per run")
    args = parser.parse_args()
    gguf = embedded_model_path()
    vocab = Vocab(str(gguf))
    llm = open_llama(gguf, threads=1, n_ctx=1024, flash_attn=True, logits_all=True, verbose=False)
    size = llm.n_vocab()
    for name in args.task or ["flat", "extreme"]:
        task = TaskCatalog.load().get(name)
        undecided, outside, rows = dict.fromkeys(KS, 0), dict.fromkeys(KS, 0.0), 0
        for run in range(args.runs):
            spec = RunSpec(task=task, run=run, seed=run_seed(0, name, run), mode="sequence", steps=3)
            rng = np.random.default_rng(spec.seed)
            llm.reset()
            llm.eval(list(vocab.prompt(spec)[1]))
            for _ in range(args.tokens):
                logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
                e = np.exp(logits - logits.max())
                logp = np.log(e / e.sum(dtype=np.float32)).astype(np.float64)  # as the server's float32 softmax
                order = np.argsort(-logp, kind="stable")
                u = seed_uniform(draw_seed(rng))
                rows += 1
                for k in KS:
                    outside[k] += 1.0 - float(np.exp(logp[order[:k]]).sum())
                    seen = {int(i): float(logp[i]) for i in order[:k]}
                    undecided[k] += native.decided_draw(seen, u, size) is None
                tok = draw_at(logp, u)
                if tok in vocab.eog:
                    break
                llm.eval([tok])
        print(f"{name}: {rows} draws")
        for k in KS:
            print(f"  top {k:6d}: undecided {undecided[k] / rows:6.1%}   mass outside {outside[k] / rows:.4f}")
    llm.close()
    vocab.close()


if __name__ == "__main__":
    main()
