"""Benchmark (not a test): the same GGUF profiled in-process and through llama-cpp-python's server (issue 11).

Profiles the embedded SmolLM2 with the local backend, then through `python -m llama_cpp.server`
(tests/llama_cpp_server_plain.py) driven step by step (--tokenizer, the completions route) and free-running
(the chat route, one generation per run), same seed and runs; prints e-score and ATVD per task, the largest
difference to in-process, and the wall times.

    python bench/http_fidelity.py [--runs 30] [--steps N] [--task extreme --task flat ...] [--url URL] [--free]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deval import backends as registry  # noqa: E402
from deval.analyses.profile import ProfileConfig, manifest, run_profile  # noqa: E402
from deval.backends.local import embedded_model_path  # noqa: E402
from deval.core.tasks import TaskCatalog  # noqa: E402
from deval.runs.store import RunDir  # noqa: E402


def start_server(gguf: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "llama_cpp_server_plain.py"), "--model", str(gguf),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(600):
        try:
            httpx.get(url + "/models", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not come up")


def profile(name: str, backend: str, model: str | None, options: dict, args, tasks) -> tuple[dict, float]:
    config = ProfileConfig(backend=backend, model=model or "", tasks=tasks, runs=args.runs, steps=args.steps,
                           seed=args.seed, backend_options=tuple(options.items()))
    start = time.perf_counter()
    engine = registry.create(backend, model, **options)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            summary = run_profile(config, engine, RunDir.create(Path(tmp) / name, manifest(config, engine)))
    finally:
        engine.close()
    return summary, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=None, help="item positions per run (default: each task's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", action="append", default=[])
    parser.add_argument("--url", default=None, help="a running llama-cpp-python server (else one is started)")
    parser.add_argument("--free", action="store_true", help="also the free-running chat route (no --tokenizer)")
    args = parser.parse_args()
    catalog = TaskCatalog.load()
    tasks = tuple(catalog.get(t) for t in (args.task or sorted(catalog.tasks)))
    gguf = embedded_model_path()
    proc, url = (None, args.url) if args.url else start_server(gguf)
    cache = tempfile.mkdtemp(prefix="deval-fidelity-")
    try:
        results = {"in-process": profile("local", "local", None, {"threads": 1}, args, tasks)}
        http = {"base_url": url, "cache_dir": cache, "tokenizer": str(gguf)}
        results["http step by step"] = profile("step", "llama-cpp-python", "smollm2", http, args, tasks)
        if args.free:
            free = {"base_url": url, "cache_dir": cache, "api_key_env": ""}
            results["http free-running"] = profile("free", "openai", "smollm2", free, args, tasks)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    ref, ref_time = results["in-process"]
    print(f"{args.runs} runs, seed {args.seed}, steps {args.steps or 'per task'}; e-score / ATVD per task")
    for name, (summary, took) in results.items():
        worst = 0.0
        cells = []
        for t in tasks:
            got, want = summary["tasks"][t.name], ref["tasks"][t.name]
            e, a = got["e_score"]["mean"], got["atvd"]["mean"]
            worst = max(worst, abs(e - want["e_score"]["mean"]), abs(a - want["atvd"]["mean"]))
            cells.append(f"{t.name} {e:.3f}/{a:.3f}")
        print(f"  {name:18s} {took:7.1f} s ({took / ref_time:4.2f}x)  max |diff| {worst:.4f}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
