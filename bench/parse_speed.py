"""Time deval's HTTP response parsing (logprobs.parse_response) on a stub chat response, here and in --before.

    python bench/parse_speed.py [--before /path/to/old/checkout] [--tokens 68] [--top 5]

The response comes from tests/stubserver.py (the one bench/http_throughput.py serves); best of 5 timeit repeats.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parser_of(checkout: Path, name: str):
    """deval/backends/logprobs.py of a checkout, loaded on its own (it imports nothing else of deval)."""
    spec = importlib.util.spec_from_file_location(name, checkout / "deval" / "backends" / "logprobs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="another checkout to time alongside")
    parser.add_argument("--tokens", type=int, default=68)
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from stubserver import response_for

    body = {"messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": args.top,
            "max_tokens": args.tokens, "seed": 1}
    data = json.loads(json.dumps(response_for("/v1/chat/completions", body)))
    checkouts = ([("before", args.before.resolve())] if args.before else []) + [("this checkout", ROOT)]
    for label, checkout in checkouts:
        module = parser_of(checkout, f"logprobs_{len(label)}")
        tokens = len(module.parse_response(data)[0].tokens)
        seconds = min(timeit.repeat(lambda: module.parse_response(data), number=200, repeat=5)) / 200
        print(f"{label:14s} parse_response: {seconds * 1e6:6.0f} us per response ({tokens} tokens, top-{args.top})")


if __name__ == "__main__":
    main()
