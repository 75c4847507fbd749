"""What the CLI commands share: consoles, option declarations, range checks, and building a ProfileConfig."""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, List, Optional

import typer
from rich.console import Console

from deval import backends as registry
from deval.cli import validate
from deval.cli.validate import Number
from deval.errors import ConfigError
from deval.core.tasks import MODES, TaskCatalog

if TYPE_CHECKING:
    from deval.analyses.profile import ProfileConfig
    from deval.core.sampling import Filters

out = Console()
err = Console(stderr=True)
DEFAULT_TASKS = ["extreme", "flat"]
MAX_RUNS, MAX_STEPS, MAX_SAMPLES = 100_000, 10_000, 1_000_000
MAX_CTX = 1 << 20  # llama.cpp's models top out well below this; the local backend names the model's own limit

# Options that `profile` and `sweep` share (typer reads these Annotated declarations).
BackendOpt = Annotated[str, typer.Option(help="Backend name or preset (see 'deval backends').")]
ModelOpt = Annotated[Optional[str], typer.Option(
    help="Model: a GGUF path (local), a model name (HTTP), d/e/... (mock).")]
TaskOpt = Annotated[List[str], typer.Option("--task", help="Task name or .toml path; repeatable.")]
TasksDirOpt = Annotated[List[Path], typer.Option("--tasks-dir", help="Extra directory of task TOML files.")]
RunsOpt = Annotated[int, typer.Option(help="Runs per task (and temperature).", parser=Number(int, 1, MAX_RUNS, example=10))]
StepsOpt = Annotated[Optional[int], typer.Option(help="Item positions per run (default: the task's).",
                                                parser=Number(int, 1, MAX_STEPS, example=30))]
SeedOpt = Annotated[int, typer.Option(help="Seed for sampling and bootstrap intervals.",
                                      parser=Number(int, 0, 2**63 - 1, example=0))]
ModeOpt = Annotated[Optional[str], typer.Option(help="sequence | independent (default: the task's).")]
TopKOpt = Annotated[Optional[int], typer.Option("--top-k", help="Keep the k most likely tokens.",
                                                parser=Number(int, 1, 10**7, example=40))]
TopPOpt = Annotated[Optional[float], typer.Option("--top-p", help="Keep the smallest set reaching mass p.",
                                                  parser=Number(float, 0, 1, lo_open=True, example=0.9))]
MinPOpt = Annotated[Optional[float], typer.Option("--min-p", help="Keep tokens with p >= min_p * max p.",
                                                  parser=Number(float, 0, 1, example=0.05))]
PositionsOpt = Annotated[str, typer.Option(
    help="free: the model writes its answer, off-set fields count | constrained: draws restricted to the items.")]
MinMassOpt = Annotated[float, typer.Option(
    "--min-mass", help="free positions: below this on-set mass a position is a format failure (default 0.2).",
    parser=Number(float, 0, 1, example=0.2))]
FilterOrderOpt = Annotated[str, typer.Option(help="filters-first (llama.cpp) | temperature-first (HF).")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run directory (default: runs/<time>-<model>).",
                                                parser=validate.out_dir)]
ResumeOpt = Annotated[Optional[Path], typer.Option(help="Finish an interrupted run in this directory.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print only the summary JSON on stdout.")]
GpuLayersOpt = Annotated[Optional[int], typer.Option(help="local: layers to offload to the GPU (-1 all).",
                                                    parser=Number(int, -1, 100_000, example=-1))]
ThreadsOpt = Annotated[Optional[int], typer.Option(help="local: CPU threads.", parser=Number(int, 1, 1024, example=4))]
BatchOpt = Annotated[Optional[int], typer.Option(
    help="local: runs decoded together (default: all, up to 32, within 1 GiB of KV cache); numbers do not change.",
    parser=Number(int, 1, 256, example=8))]
CtxOpt = Annotated[Optional[int], typer.Option(help="local: context size in tokens.",
                                               parser=Number(int, 64, MAX_CTX, example=4096))]
FlashAttnOpt = Annotated[Optional[str], typer.Option(
    "--flash-attn", help="local: on | off (default on, as llama.cpp's own 'auto' on CPU; llama-server -fa).")]
RawPromptOpt = Annotated[bool, typer.Option("--raw-prompt", help="local: plain text prompt, no chat template.")]
BaseUrlOpt = Annotated[Optional[str], typer.Option(
    "--base-url", help="http: server URL, e.g. http://127.0.0.1:8000/v1 (again on --resume if it held secrets).",
    callback=validate.base_url)]
ApiKeyEnvOpt = Annotated[Optional[str], typer.Option(
    "--api-key-env", help="http: environment variable with the API key.", callback=validate.api_key_env)]
ConcurrencyOpt = Annotated[Optional[int], typer.Option(
    help="http: most requests in flight (default: the preset's; backs off on timeouts).",
    parser=Number(int, 1, 1024, example=16))]
RouteOpt = Annotated[Optional[str], typer.Option(help="http: chat | completions (default: the preset's).")]
TopLogprobsOpt = Annotated[Optional[int], typer.Option("--top-logprobs", help="http: top-k logprobs to ask for.",
                                                      parser=Number(int, 1, 100_000, example=20))]
TimeoutOpt = Annotated[Optional[float], typer.Option(help="http: seconds per request attempt (default 120).",
                                                    parser=Number(float, 0, 86_400, lo_open=True, example=120))]
RetryBudgetOpt = Annotated[Optional[float], typer.Option(
    "--retry-budget", help="http: seconds of retrying per request (default 300).",
    parser=Number(float, 0, 86_400, example=300))]
MaxTokensOpt = Annotated[Optional[int], typer.Option("--max-tokens", help="http: generation limit per request.",
                                                     parser=Number(int, 1, 10**7, example=256))]
CacheDirOpt = Annotated[Optional[Path], typer.Option(
    "--cache-dir", help="http: response cache (default ~/.cache/deval).")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="http: do not read or write the response cache.")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature (> 0).",
                                               parser=Number(float, 0, 100, lo_open=True, example=1.0))]
SamplesOpt = Annotated[int, typer.Option(help="Samples to draw.", parser=Number(int, 1, MAX_SAMPLES, example=100))]
NoProbeOpt = Annotated[bool, typer.Option("--no-probe", help="http: trust the preset instead of probing the endpoint.")]
TokenizerOpt = Annotated[Optional[str], typer.Option(
    "--tokenizer", help="http: the server model's GGUF (read vocab-only): drive runs step by step on the "
                        "completions route, deval drawing each item with the run's seed.")]

BACKEND_OPTIONS = ("gpu_layers", "threads", "batch", "ctx", "raw_prompt", "flash_attn", "base_url", "api_key_env",
                   "concurrency", "route", "top_logprobs", "timeout", "retry_budget", "max_tokens", "cache_dir",
                   "no_cache", "no_probe", "tokenizer")


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
    validate.env_base_url(backend, given.get("base_url"))
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


def damaged_summary(path: Path, command: str, exc: Exception) -> ConfigError:
    """deval report on a summary.json that lacks a field or holds a wrong type."""
    what = f"lacks '{exc.args[0]}'" if isinstance(exc, KeyError) and exc.args else f"is damaged ({exc})"
    return ConfigError(f"{path / 'summary.json'} {what}; delete it and run deval {command} --resume {path} to "
                       "rewrite it from the records")


def filters_from(top_k, top_p, min_p, filter_order) -> Filters:
    from deval.core.sampling import FILTER_ORDERS, Filters  # numpy: not at start-up (deval --help stays fast)

    if filter_order not in FILTER_ORDERS:
        raise ConfigError(f"--filter-order must be one of {', '.join(FILTER_ORDERS)} (got {filter_order})")
    check_range("--top-k", top_k, lo=1)
    check_range("--top-p", top_p, lo=0, hi=1, lo_open=True)
    check_range("--min-p", min_p, lo=0, hi=1)
    return Filters(top_k=top_k, top_p=top_p, min_p=min_p, order=filter_order)


def profile_config(options: dict, temperature: float = 1.0) -> ProfileConfig:
    """Validate the options profile and sweep share (a command's locals()) and build their ProfileConfig."""
    from deval.analyses.profile import ProfileConfig  # numpy: not at start-up
    from deval.core.protocol import POSITION_MODES
    from deval.core.summary import MIN_POSITION_MASS

    o = options
    if o["mode"] is not None and o["mode"] not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)} (got {o['mode']})")
    check_range("--runs", o["runs"], lo=1)
    check_range("--steps", o["steps"], lo=1)
    check_range("--temperature", temperature, lo=0, lo_open=True)
    check_local(o["ctx"], o["threads"], o["gpu_layers"])
    if o.get("flash_attn") not in (None, "on", "off"):
        raise ConfigError(f"--flash-attn must be on or off (got {o['flash_attn']})")
    filters = filters_from(o["top_k"], o["top_p"], o["min_p"], o["filter_order"])
    positions = o.get("positions", "free")
    if positions not in POSITION_MODES:
        raise ConfigError(f"--positions must be one of {', '.join(POSITION_MODES)} (got {positions})")
    min_mass = o.get("min_mass", MIN_POSITION_MASS)
    check_range("--min-mass", min_mass, lo=0, hi=1)
    catalog = TaskCatalog.load(list(o["tasks_dir"]))
    tasks = tuple(catalog.get(ref) for ref in dict.fromkeys(o["task"]))
    validate.distinct_tasks(tasks)
    validate.check_total(o["runs"], o["steps"], [t.steps for t in tasks])
    chosen = backend_options(o["backend"], **{k: o.get(k) for k in BACKEND_OPTIONS})
    return ProfileConfig(backend=o["backend"], model=o["model"] or "", tasks=tasks, runs=o["runs"], steps=o["steps"],
                         temperature=temperature, seed=o["seed"], mode=o["mode"], filters=filters,
                         backend_options=tuple(sorted(chosen.items())), positions=positions, min_mass=min_mass)


def with_given_again(config: ProfileConfig, base_url: str | None, api_key_env: str | None) -> ProfileConfig:
    """On --resume: a URL or key variable given again replaces the stored one (the manifest keeps no secrets)."""
    again = {k: v for k, v in (("base_url", base_url), ("api_key_env", api_key_env)) if v is not None}
    if not again:
        return config
    stored = dict(config.backend_options) | backend_options(config.backend, **again)
    return dataclasses.replace(config, backend_options=tuple(sorted(stored.items())))


def default_dir(kind: str, model: str) -> Path:
    """A new, empty run directory runs/<time>-<kind>-<model>[-N], claimed atomically (see runs.store)."""
    from deval.runs.store import default_run_dir

    return default_run_dir(kind, model)


def json_summary(result) -> dict:
    """What --json prints: the run's summary and, under "run_dir", the directory that holds its files."""
    return {**result.summary, "run_dir": str(result.path)}


@contextmanager
def progress_bar(what: str, quiet: bool = False):
    """A progress callback (done, total) drawing a bar with elapsed time and ETA on a terminal's stderr; None when
    quiet or when stderr is not a terminal (logs and pipes get no bar)."""
    if quiet or not err.is_terminal:
        yield None
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from rich.progress import ProgressColumn
    from rich.text import Text

    def update(done: int, total: int) -> None:
        bars.update(bar, completed=done, total=total)

    update.engine = None  # an analysis may hang its backend here: HTTP retries then show live

    class Retries(ProgressColumn):
        def render(self, task) -> Text:
            n = getattr(update.engine, "retries", 0)
            return Text(f"{n} retr{'y' if n == 1 else 'ies'}" if n else "", style="yellow")

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("ETA"), TimeRemainingColumn(), Retries()]
    with Progress(*columns, console=err, transient=True) as bars:
        bar = bars.add_task(what, total=None)
        yield update


def check_resume(stored_config: dict, path: Path) -> None:
    """On --resume: refuse an option typed again with a value other than the run's (names the key)."""
    validate.refuse_changed_on_resume(stored_config, path)
