"""What the CLI commands share: consoles, option declarations, range checks, and building a ProfileConfig."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.console import Console

from deval import backends as registry
from deval.core.protocol import POSITION_MODES
from deval.core.summary import MIN_POSITION_MASS
from deval.core.sampling import FILTER_ORDERS, Filters
from deval.errors import ConfigError
from deval.analyses.profile import ProfileConfig
from deval.core.tasks import MODES, TaskCatalog

out = Console()
err = Console(stderr=True)
DEFAULT_TASKS = ["extreme", "flat"]

# Options that `profile` and `sweep` share (typer reads these Annotated declarations).
BackendOpt = Annotated[str, typer.Option(help="Backend name or preset (see 'deval backends').")]
ModelOpt = Annotated[Optional[str], typer.Option(
    help="Model: a GGUF path (local), a model name (HTTP), d/e/... (mock).")]
TaskOpt = Annotated[List[str], typer.Option("--task", help="Task name or .toml path; repeatable.")]
TasksDirOpt = Annotated[List[Path], typer.Option("--tasks-dir", help="Extra directory of task TOML files.")]
RunsOpt = Annotated[int, typer.Option(help="Runs per task (and temperature).")]
StepsOpt = Annotated[Optional[int], typer.Option(help="Item positions per run (default: the task's).")]
SeedOpt = Annotated[int, typer.Option(help="Seed for sampling and bootstrap intervals.")]
ModeOpt = Annotated[Optional[str], typer.Option(help="sequence | independent (default: the task's).")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="Keep the k most likely tokens.")]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", help="Keep the smallest set reaching mass p.")]
MinPOpt = Annotated[Optional[float], typer.Option("--min-p", help="Keep tokens with p >= min_p * max p.")]
PositionsOpt = Annotated[str, typer.Option(
    help="free: the model writes its answer, off-set fields count | constrained: draws restricted to the items.")]
MinMassOpt = Annotated[float, typer.Option(
    "--min-mass", help="free positions: below this on-set mass a position is a format failure (default 0.2).")]
FilterOrderOpt = Annotated[str, typer.Option(help="filters-first (llama.cpp) | temperature-first (HF).")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run directory (default: runs/<time>-<model>).")]
ResumeOpt = Annotated[Optional[Path], typer.Option(help="Finish an interrupted run in this directory.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only the summary JSON on stdout.")]
GpuLayersOpt = Annotated[Optional[int], typer.Option(help="local: layers to offload to the GPU (-1 all).")]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="local: CPU threads.")]
CtxOpt = Annotated[Optional[int], typer.Option(help="local: context size in tokens.")]
RawPromptOpt = Annotated[bool, typer.Option("--raw-prompt", help="local: plain text prompt, no chat template.")]
BaseUrlOpt = Annotated[Optional[str], typer.Option(
    "--base-url", help="http: server URL, e.g. http://127.0.0.1:8000/v1 (again on --resume if it held secrets).")]
ApiKeyEnvOpt = Annotated[Optional[str], typer.Option(
    "--api-key-env", help="http: environment variable with the API key.")]
ConcurrencyOpt = Annotated[Optional[int], typer.Option(help="http: requests in flight at once (default 16).")]
RouteOpt = Annotated[Optional[str], typer.Option(help="http: chat | completions (default: the preset's).")]
TopLogprobsOpt = Annotated[Optional[int], typer.Option("--top-logprobs", help="http: top-k logprobs to ask for.")]
TimeoutOpt = Annotated[Optional[float], typer.Option(help="http: seconds per request attempt (default 120).")]
RetryBudgetOpt = Annotated[Optional[float], typer.Option(
    "--retry-budget", help="http: seconds of retrying per request.")]
MaxTokensOpt = Annotated[Optional[int], typer.Option("--max-tokens", help="http: generation limit per request.")]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", help="http: response cache (default ~/.cache/deval).")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="http: do not read or write the response cache.")]
NoProbeOpt = Annotated[bool, typer.Option("--no-probe", help="http: trust the preset instead of probing the endpoint.")]

BACKEND_OPTIONS = ("gpu_layers", "threads", "ctx", "raw_prompt", "base_url", "api_key_env", "concurrency", "route",
                   "top_logprobs", "timeout", "retry_budget", "max_tokens", "cache_dir", "no_cache", "no_probe")


def check_range(name: str, value, lo=None, hi=None, lo_open=False) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number (got {value})")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{name} must be {'>' if lo_open else '>='} {lo} (got {value})")
    if hi is not None and value > hi:
        raise ConfigError(f"{name} must be <= {hi} (got {value})")


def backend_options(backend: str, **given) -> dict:
    """The backend-specific options the user set; an option the backend does not take is an error."""
    accepted = getattr(registry.backend_class(backend), "OPTIONS", ())
    chosen = {k: str(v) if isinstance(v, Path) else v for k, v in given.items() if v is not None and v is not False}
    for key in chosen:
        if key not in accepted:
            raise ConfigError(f"--{key.replace('_', '-')} does not apply to the {backend} backend; drop it")
    return chosen


def check_local(ctx: int | None, threads: int | None, gpu_layers: int | None) -> None:
    """Range checks for the local backend's options."""
    check_range("--ctx", ctx, lo=64)
    check_range("--threads", threads, lo=1)
    check_range("--gpu-layers", gpu_layers, lo=-1)


def interrupted(command: str, path: Path) -> typer.Exit:
    """Say where the finished work is and how to finish the rest; exit 130."""
    err.print(f"interrupted: every finished record is in {path}; finish with: deval {command} --resume {path}",
              highlight=False, soft_wrap=True)
    return typer.Exit(130)


def filters_from(top_k, top_p, min_p, filter_order) -> Filters:
    if filter_order not in FILTER_ORDERS:
        raise ConfigError(f"--filter-order must be one of {', '.join(FILTER_ORDERS)} (got {filter_order})")
    check_range("--top-k", top_k, lo=1)
    check_range("--top-p", top_p, lo=0, hi=1, lo_open=True)
    check_range("--min-p", min_p, lo=0, hi=1)
    return Filters(top_k=top_k, top_p=top_p, min_p=min_p, order=filter_order)


def profile_config(options: dict, temperature: float = 1.0) -> ProfileConfig:
    """Validate the options profile and sweep share (a command's locals()) and build their ProfileConfig."""
    o = options
    if o["mode"] is not None and o["mode"] not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)} (got {o['mode']})")
    check_range("--runs", o["runs"], lo=1)
    check_range("--steps", o["steps"], lo=1)
    check_range("--temperature", temperature, lo=0, lo_open=True)
    check_local(o["ctx"], o["threads"], o["gpu_layers"])
    filters = filters_from(o["top_k"], o["top_p"], o["min_p"], o["filter_order"])
    positions = o.get("positions", "free")
    if positions not in POSITION_MODES:
        raise ConfigError(f"--positions must be one of {', '.join(POSITION_MODES)} (got {positions})")
    min_mass = o.get("min_mass", MIN_POSITION_MASS)
    check_range("--min-mass", min_mass, lo=0, hi=1)
    catalog = TaskCatalog.load(list(o["tasks_dir"]))
    tasks = tuple(catalog.get(ref) for ref in dict.fromkeys(o["task"]))
    chosen = backend_options(o["backend"], **{k: o[k] for k in BACKEND_OPTIONS})
    return ProfileConfig(backend=o["backend"], model=o["model"] or "", tasks=tasks, runs=o["runs"], steps=o["steps"],
                         temperature=temperature, seed=o["seed"], mode=o["mode"], filters=filters,
                         backend_options=tuple(sorted(chosen.items())), positions=positions, min_mass=min_mass)


def with_given_again(config: ProfileConfig, base_url: str | None, api_key_env: str | None) -> ProfileConfig:
    """On --resume: a URL or key variable given again replaces the stored one (the manifest keeps no secrets)."""
    again = {k: v for k, v in (("base_url", base_url), ("api_key_env", api_key_env)) if v is not None}
    if not again:
        return config
    stored = dict(config.backend_options) | backend_options(config.backend, **again)
    return ProfileConfig(**{**config.__dict__, "backend_options": tuple(sorted(stored.items()))})


def default_dir(kind: str, model: str) -> Path:
    name = Path(model).stem if model else "model"
    prefix = f"{kind}-" if kind else ""
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{prefix}{name}"
