"""The deval command line: profile, report, tasks, backends."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import List

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deval import backends as registry
from deval.cli.common import (DEFAULT_TASKS, ApiKeyEnvOpt, BackendOpt, BaseUrlOpt, CacheDirOpt, ConcurrencyOpt,
                              CtxOpt, FilterOrderOpt, GpuLayersOpt, JsonOpt, MaxTokensOpt, MinPOpt, ModelOpt, ModeOpt,
                              NoCacheOpt, NoProbeOpt, OutOpt, PositionsOpt, MinMassOpt, RawPromptOpt, ResumeOpt, RetryBudgetOpt, RouteOpt, RunsOpt,
                              SeedOpt, StepsOpt, TaskOpt, TasksDirOpt, ThreadsOpt, TimeoutOpt, TopKOpt, TopLogprobsOpt,
                              TopPOpt,
                              default_dir, err, interrupted, out, profile_config, with_given_again)
from deval.cli.dynamics import register as register_dynamics
from deval.cli.dynamics import render_run
from deval.errors import ConfigError, DevalError
from deval.analyses.profile import MANIFEST_SCHEMA, ProfileConfig, command_for, manifest, run_profile
from deval.report.profile import render_profile
from deval.runs.store import RunDir, dumps
from deval.core.tasks import TaskCatalog, builtin_tasks_dir, task_from_dict
from deval.core.validsets import builtin_valid_sets, builtin_valid_sets_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Profile how a language model samples: P_token against P_task, D-model or E-model.")
VALID_SET_PREVIEW = 6  # members shown per valid-set task in 'deval tasks'


@app.command()
def profile(
    backend: BackendOpt = "local",
    model: ModelOpt = None,
    task: TaskOpt = DEFAULT_TASKS,
    tasks_dir: TasksDirOpt = [],
    runs: RunsOpt = 10,
    steps: StepsOpt = None,
    temperature: float = typer.Option(1.0, help="Sampling temperature (> 0)."),
    seed: SeedOpt = 0,
    mode: ModeOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    filter_order: FilterOrderOpt = "filters-first",
    positions: PositionsOpt = "free",
    min_mass: MinMassOpt = 0.2,
    out_dir: OutOpt = None,
    resume: ResumeOpt = None,
    json_out: JsonOpt = False,
    gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    ctx: CtxOpt = None,
    raw_prompt: RawPromptOpt = False,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = None,
    concurrency: ConcurrencyOpt = None,
    route: RouteOpt = None,
    top_logprobs: TopLogprobsOpt = None,
    timeout: TimeoutOpt = None,
    retry_budget: RetryBudgetOpt = None,
    max_tokens: MaxTokensOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    no_probe: NoProbeOpt = False,
) -> None:
    """Profile a model on tasks: e-score, ATVD, result TVD, ... and the D/E verdict."""
    if resume is not None:
        run_dir = RunDir.open(resume)
        stored = run_dir.manifest()
        if stored.get("schema") != MANIFEST_SCHEMA:
            raise ConfigError(f"{resume} is not a profile run ({stored.get('schema')}); resume it with "
                              f"deval {command_for(stored)} --resume {resume}")
        config = with_given_again(ProfileConfig.from_dict(stored["config"]), base_url, api_key_env)
    else:
        config = profile_config(locals(), temperature)
        run_dir = None
    engine = registry.create(config.backend, config.model or None, **dict(config.backend_options))
    try:
        if run_dir is None:
            config = replace(config, model=engine.model)
            run_dir = RunDir.create(out_dir or default_dir("", engine.model or config.backend),
                                    manifest(config, engine))
        try:
            summary = _run_with_progress(config, engine, run_dir, quiet=json_out)
        except KeyboardInterrupt:
            raise interrupted("profile", run_dir.path) from None
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
        done = len(run_dir.completed_steps())  # a resumed run starts part-way
        bar = progress.add_task(f"measuring {Path(engine.model).name}", total=total, completed=min(done, total))
        return run_profile(config, engine, run_dir, on_step=lambda step: progress.advance(bar))


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory written by 'deval profile --out'."),
           json_out: bool = typer.Option(False, "--json", help="Print only the summary JSON."),
           steps_out: str = typer.Option(None, "--steps", help="Print one row per item position: csv | json.")
           ) -> None:
    """Re-render a finished run from its files, without touching a model."""
    rd = RunDir.open(run_dir)
    if not rd.has_summary():
        raise ConfigError(f"{run_dir} has not finished; finish it with deval {command_for(rd.manifest())} "
                          f"--resume {run_dir}")
    summary = rd.summary()
    if steps_out is not None:
        _print_steps(rd, summary, steps_out)
        return
    if json_out:
        print(dumps(summary))
        return
    if render_run(summary, rd.path, out):  # sweep, calibration or diversity run
        return
    config = rd.manifest()["config"]
    tasks = {t["name"]: task_from_dict({k: v for k, v in t.items() if k != "source"}, t.get("source", ""))
             for t in config["tasks"]}
    render_profile(summary, tasks, rd.steps(), console=out, where=str(rd.path))


def _print_steps(rd: RunDir, summary: dict, fmt: str) -> None:
    from deval.report.steps import FORMATS, render_steps, step_rows
    if fmt not in FORMATS:
        raise ConfigError(f"--steps must be one of {', '.join(FORMATS)} (got {fmt})")
    if command_for(rd.manifest()) != "profile":
        raise ConfigError(f"--steps exports profile runs; {rd.path} is a {command_for(rd.manifest())} run "
                          f"(its per-temperature profiles are in its T*/ folders)")
    config = ProfileConfig.from_dict(rd.manifest()["config"])
    rows = step_rows({t.name: t for t in config.tasks}, rd.steps(), config.min_mass, config.positions)
    sys.stdout.write(render_steps(rows, fmt))


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

from deval.cli.probe import probe_command  # noqa: E402  (the probe command lives in its own module)

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
