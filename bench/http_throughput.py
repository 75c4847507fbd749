"""Benchmark (not a test): deval's requests/s against an instant local stub at concurrency 64.

Compared with a bare async httpx loop sending the same request bodies at the same concurrency and parsing the
JSON with the standard library (the floor: what no client can beat by much; deval reads JSON with orjson, so the
same loop with orjson is shown too) and with a sequential openai-SDK loop (what users write by
hand). The stub runs in its own process (tests/stubserver.py) and answers from memory after a warm-up pass.

    python bench/http_throughput.py [--requests 1000] [--repeat 7] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deval.core.protocol import RunSpec, run_seed  # noqa: E402
from deval.backends.openai import OpenAIBackend  # noqa: E402
from deval.core.tasks import TaskCatalog  # noqa: E402


def start_stub(delay: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "stubserver.py"), "--delay", str(delay)],
                            stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def specs(n: int, steps: int) -> list[RunSpec]:
    task = TaskCatalog.load().get("extreme")
    return [RunSpec(task=task, run=r, seed=run_seed(0, task.name, r), mode="sequence", steps=steps) for r in range(n)]


def engine(url: str, concurrency: int, cache: str | None, top: int) -> OpenAIBackend:
    options = {"cache_dir": cache} if cache else {"no_cache": True}
    return OpenAIBackend(model="stub", preset="llama-server", base_url=url, no_probe=True, concurrency=concurrency,
                         top_logprobs=top, **options)


async def floor(url: str, bodies: list[dict], concurrency: int, loads=None) -> float:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url + "/", limits=limits, timeout=60) as client:
        async def one(body):
            async with gate:
                r = await client.post("chat/completions", json=body)
                r.raise_for_status()
                return loads(r.content) if loads else r.json()

        start = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return len(bodies) / (time.perf_counter() - start)


def deval_rate(url: str, runs: list[RunSpec], concurrency: int, cache: bool, top: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        e = engine(url, concurrency, tmp if cache else None, top)
        start = time.perf_counter()
        steps = sum(1 for _ in e.measure(runs))
        elapsed = time.perf_counter() - start
        e.close()
        assert e.requests == len(runs) and steps > 0
        return len(runs) / elapsed


def sdk_rate(url: str, bodies: list[dict]) -> float:
    import openai

    client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0)
    start = time.perf_counter()
    for body in bodies:
        extra = {k: v for k, v in body.items() if k in ("top_k", "min_p", "repeat_penalty")}
        plain = {k: v for k, v in body.items() if k not in extra}
        client.chat.completions.create(**plain, extra_body=extra)
    return len(bodies) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="items per run (sets the response size)")
    parser.add_argument("--top", type=int, default=5, help="top_logprobs asked for")
    parser.add_argument("--sdk-requests", type=int, default=300)
    parser.add_argument("--stub-delay", type=float, default=0.0, help="seconds the stub waits per answer (latency)")
    args = parser.parse_args()
    proc, url = start_stub(args.stub_delay)
    try:
        runs = specs(args.requests, args.steps)
        e = engine(url, args.concurrency, None, args.top)
        bodies = [e._body(s, "chat", args.top, s.seed) for s in runs]
        asyncio.run(floor(url, bodies, args.concurrency))  # warm-up: the stub memoises every answer
        size = len(httpx.post(url + "/chat/completions", json=bodies[0]).content)
        results = {"floor (bare async httpx)": [], "floor, orjson": [], "deval (cache on)": [], "deval (no cache)": []}
        for _ in range(args.repeat):  # paired and interleaved trials: machine noise hits all alike
            results["floor (bare async httpx)"].append(asyncio.run(floor(url, bodies, args.concurrency)))
            # the same loop reading JSON as deval does (orjson): how much of deval's ratio is the faster parser
            results["floor, orjson"].append(asyncio.run(floor(url, bodies, args.concurrency, orjson.loads)))
            results["deval (cache on)"].append(deval_rate(url, runs, args.concurrency, True, args.top))
            results["deval (no cache)"].append(deval_rate(url, runs, args.concurrency, False, args.top))
        results["openai SDK, sequential"] = [sdk_rate(url, bodies[: args.sdk_requests])] * args.repeat
    finally:
        proc.terminate()
        proc.wait(10)
    floors = results["floor (bare async httpx)"]
    print(f"{args.requests} requests per trial, concurrency {args.concurrency}, stub latency {args.stub_delay:g}s, "
          f"response {size} bytes "
          f"(sequence mode, {args.steps} items, top-{args.top}); {args.repeat} paired trials")
    for name, values in results.items():
        ratios = [v / f for v, f in zip(values, floors)]
        print(f"  {name:26s} median {statistics.median(values):7.1f} req/s   median ratio to floor "
              f"{statistics.median(ratios):5.2f}   trials: " + ", ".join(f"{v:.0f}" for v in values[: len(set(values))]))


if __name__ == "__main__":
    main()
