"""The deval command line: profile, report, tasks, backends."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deval import backends as registry
from deval.backend import FILTER_ORDERS, Filters
from deval.cli_dynamics import register as register_dynamics
from deval.cli_dynamics import render_run
from deval.errors import ConfigError, DevalError
from deval.profile import MANIFEST_SCHEMA, ProfileConfig, command_for, manifest, run_profile
from deval.report import render_profile
from deval.store import RunDir, dumps
from deval.tasks import MODES, TaskCatalog, builtin_tasks_dir, task_from_dict
from deval.validsets import builtin_valid_sets, builtin_valid_sets_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Profile how a language model samples: P_token against P_task, D-model or E-model.")
out = Console()
err = Console(stderr=True)
DEFAULT_TASKS = ["extreme", "flat"]
VALID_SET_PREVIEW = 6  # members shown per valid-set task in 'deval tasks'


def backend_options(backend: str, **given) -> dict:
    """The backend-specific options the user set; an option the backend does not take is an error."""
    accepted = getattr(registry.backend_class(backend), "OPTIONS", ())
    chosen = {k: v for k, v in given.items() if v is not None and v is not False}
    for key in chosen:
        if key not in accepted:
            raise ConfigError(f"--{key.replace('_', '-')} does not apply to the {backend} backend; drop it")
    return chosen


def check_range(name: str, value, lo=None, hi=None, lo_open=False) -> None:
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number (got {value})")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{name} must be {'>' if lo_open else '>='} {lo} (got {value})")
    if hi is not None and value > hi:
        raise ConfigError(f"{name} must be <= {hi} (got {value})")


@app.command()
def profile(
    backend: str = typer.Option("local", help="Backend name or preset (see 'deval backends')."),
    model: Optional[str] = typer.Option(None, help="Model: a GGUF path (local), a model name (HTTP), d/e/... (mock)."),
    task: List[str] = typer.Option(DEFAULT_TASKS, "--task", help="Task name or .toml path; repeatable."),
    tasks_dir: List[Path] = typer.Option([], "--tasks-dir", help="Extra directory of task TOML files."),
    runs: int = typer.Option(10, help="Runs per task."),
    steps: Optional[int] = typer.Option(None, help="Item positions per run (default: the task's)."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (> 0)."),
    seed: int = typer.Option(0, help="Seed for sampling and bootstrap intervals."),
    mode: Optional[str] = typer.Option(None, help="sequence | independent (default: the task's)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep the k most likely tokens."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Keep the smallest set reaching mass p."),
    min_p: Optional[float] = typer.Option(None, "--min-p", help="Keep tokens with p >= min_p * max p."),
    filter_order: str = typer.Option("filters-first", help="filters-first (llama.cpp) | temperature-first (HF)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<time>-<model>)."),
    resume: Optional[Path] = typer.Option(None, help="Finish an interrupted run in this directory."),
    json_out: bool = typer.Option(False, "--json", help="Print only the summary JSON on stdout."),
    gpu_layers: Optional[int] = typer.Option(None, help="local: layers to offload to the GPU (-1 all)."),
    threads: Optional[int] = typer.Option(None, help="local: CPU threads."),
    ctx: Optional[int] = typer.Option(None, help="local: context size in tokens."),
    raw_prompt: bool = typer.Option(False, "--raw-prompt", help="local: plain text prompt, no chat template."),
    # -- OpenAI-compatible backends (openai and the presets in 'deval backends') --
    base_url: Optional[str] = typer.Option(None, "--base-url", help="http: server URL, e.g. http://127.0.0.1:8000/v1."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="http: environment variable with the API key."),
    concurrency: Optional[int] = typer.Option(None, help="http: requests in flight at once (default 16)."),
    route: Optional[str] = typer.Option(None, help="http: chat | completions (default: the preset's)."),
    top_logprobs: Optional[int] = typer.Option(None, "--top-logprobs", help="http: top-k logprobs to ask for."),
    timeout: Optional[float] = typer.Option(None, help="http: seconds per request attempt (default 120)."),
    retry_budget: Optional[float] = typer.Option(None, "--retry-budget", help="http: seconds of retrying per request."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="http: generation limit per request."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="http: response cache (default ~/.cache/deval)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="http: do not read or write the response cache."),
    no_probe: bool = typer.Option(False, "--no-probe", help="http: trust the preset instead of probing the endpoint."),
) -> None:
    """Profile a model on tasks: e-score, ATVD, result TVD, ... and the D/E verdict."""
    if resume is not None:
        run_dir = RunDir.open(resume)
        stored = run_dir.manifest()
        if stored.get("schema") != MANIFEST_SCHEMA:
            raise ConfigError(f"{resume} is not a profile run ({stored.get('schema')}); resume it with "
                              f"deval {command_for(stored)} --resume {resume}")
        config = ProfileConfig.from_dict(stored["config"])
        again = {k: v for k, v in (("base_url", base_url), ("api_key_env", api_key_env)) if v is not None}
        if again:  # a URL or key variable given again (the manifest keeps no credentials)
            config = replace(config, backend_options=tuple(sorted({**dict(config.backend_options), **again}.items())))
    else:
        if mode is not None and mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)} (got {mode})")
        if filter_order not in FILTER_ORDERS:
            raise ConfigError(f"--filter-order must be one of {', '.join(FILTER_ORDERS)} (got {filter_order})")
        check_range("--runs", runs, lo=1)
        check_range("--steps", steps, lo=1)
        check_range("--temperature", temperature, lo=0, lo_open=True)
        check_range("--top-k", top_k, lo=1)
        check_range("--top-p", top_p, lo=0, hi=1, lo_open=True)
        check_range("--min-p", min_p, lo=0, hi=1)
        check_range("--ctx", ctx, lo=64)
        check_range("--threads", threads, lo=1)
        check_range("--gpu-layers", gpu_layers, lo=-1)
        catalog = TaskCatalog.load(list(tasks_dir))
        chosen = tuple(catalog.get(ref) for ref in dict.fromkeys(task))
        options = backend_options(backend, gpu_layers=gpu_layers, threads=threads, ctx=ctx, raw_prompt=raw_prompt,
                                  base_url=base_url, api_key_env=api_key_env, concurrency=concurrency, route=route,
                                  top_logprobs=top_logprobs, timeout=timeout, retry_budget=retry_budget,
                                  max_tokens=max_tokens, cache_dir=str(cache_dir) if cache_dir else None,
                                  no_cache=no_cache, no_probe=no_probe)
        config = ProfileConfig(backend=backend, model=model or "", tasks=chosen, runs=runs, steps=steps,
                               temperature=temperature, seed=seed, mode=mode,
                               filters=Filters(top_k=top_k, top_p=top_p, min_p=min_p, order=filter_order),
                               backend_options=tuple(sorted(options.items())))
        run_dir = None
    engine = registry.create(config.backend, config.model or None, **dict(config.backend_options))
    try:
        if run_dir is None:
            name = Path(engine.model).stem if engine.model else config.backend
            path = out_dir or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
            config = replace(config, model=engine.model)
            run_dir = RunDir.create(path, manifest(config, engine))
        try:
            summary = _run_with_progress(config, engine, run_dir, quiet=json_out)
        except KeyboardInterrupt:
            err.print(f"interrupted: every finished step is in {run_dir.path}; "
                      f"finish with: deval profile --resume {run_dir.path}", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
    finally:
        engine.close()
    if json_out:
        print(dumps(summary))
    else:
        render_profile(summary, {t.name: t for t in config.tasks}, run_dir.steps(), console=out,
                       where=str(run_dir.path))


def _run_with_progress(config: ProfileConfig, engine, run_dir: RunDir, quiet: bool) -> dict:
    total = sum((config.steps or t.steps) * config.runs for t in config.tasks)
    if quiet or not err.is_terminal:
        return run_profile(config, engine, run_dir)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task(f"measuring {engine.model}", total=total)
        return run_profile(config, engine, run_dir, on_step=lambda step: progress.advance(bar))


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory written by 'deval profile --out'."),
           json_out: bool = typer.Option(False, "--json", help="Print only the summary JSON.")) -> None:
    """Re-render a finished run from its files, without touching a model."""
    rd = RunDir.open(run_dir)
    if not rd.has_summary():
        raise ConfigError(f"{run_dir} has not finished; finish it with deval {command_for(rd.manifest())} "
                          f"--resume {run_dir}")
    summary = rd.summary()
    if json_out:
        print(dumps(summary))
        return
    if render_run(summary, rd.path, out):  # sweep, calibration or diversity run
        return
    config = rd.manifest()["config"]
    tasks = {t["name"]: task_from_dict({k: v for k, v in t.items() if k != "source"}, t.get("source", ""))
             for t in config["tasks"]}
    render_profile(summary, tasks, rd.steps(), console=out, where=str(rd.path))


@app.command("tasks")
def list_tasks(tasks_dir: List[Path] = typer.Option([], "--tasks-dir", help="Extra directory of task files.")) -> None:
    """List the tasks with a P_task (profile, sweep) and the valid-set tasks (calibration, diversity)."""
    table = Table(title="tasks with a target distribution: for 'deval profile' and 'deval sweep'")
    for col in ("name", "items : P_task", "mode", "steps", "description"):
        table.add_column(col)
    for t in TaskCatalog.load(list(tasks_dir)).tasks.values():
        dist = ", ".join(f"{x}:{w:.3g}" for x, w in zip(t.items, t.weights))
        table.add_row(t.name, dist, t.mode, str(t.steps), t.description)
    out.print(table)
    valid = Table(title="valid-set tasks: for 'deval calibration' and 'deval diversity' (no P_task)")
    for col in ("name", "valid answers", "description"):
        valid.add_column(col)
    for t in builtin_valid_sets().values():
        shown = ", ".join(t.members[:VALID_SET_PREVIEW]) + (", ..." if len(t.members) > VALID_SET_PREVIEW else "")
        valid.add_row(t.name, f"{len(t.members)}: {shown}", t.description)
    out.print(valid)
    out.print(f"[dim]shipped in {builtin_tasks_dir()} (valid sets in {builtin_valid_sets_dir()}); "
              "--task also takes a .toml path[/]", highlight=False)


@app.command("backends")
def list_backends() -> None:
    """List the backends (and presets, where available)."""
    table = Table(title="backends")
    table.add_column("name")
    table.add_column("what it is")
    for name, about in registry.DESCRIPTIONS.items():
        table.add_row(name, about)
    for name, preset in registry.server_presets().items():  # server presets of the openai backend
        if name not in registry.DESCRIPTIONS:
            table.add_row(name, f"preset: {preset.description} · {preset.base_url} · {preset.route}, "
                                f"top-{preset.top_logprobs_cap}")
    out.print(table)


register_dynamics(app)

from deval.cli_probe import probe_command  # noqa: E402  (the probe command lives in its own module)

app.command("probe")(probe_command)


def main() -> None:
    try:
        app()
    except DevalError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
