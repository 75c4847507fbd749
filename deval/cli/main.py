"""The deval command line: profile, report, tasks, backends (and the commands registered from other modules)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from deval import backends as registry
from deval.cli.common import (DEFAULT_TASKS, ApiKeyEnvOpt, BatchOpt, BackendOpt, BaseUrlOpt, CacheDirOpt,
                              ConcurrencyOpt, CtxOpt, FilterOrderOpt, GpuLayersOpt, JsonOpt, MaxTokensOpt, MinPOpt,
                              ModelOpt, ModeOpt, NoCacheOpt, NoProbeOpt, OutOpt, PositionsOpt, MinMassOpt, RawPromptOpt,
                              FlashAttnOpt, ResumeOpt, RetryBudgetOpt, RouteOpt, RunsOpt, SeedOpt, StepsOpt, TaskOpt,
                              TasksDirOpt,
                              ThreadsOpt, TimeoutOpt, TokenizerOpt, TopKOpt, TopLogprobsOpt, TemperatureOpt, TopPOpt,
                              check_resume, damaged_summary, err, interrupted, json_summary, out, profile_config,
                              progress_bar, with_given_again)
from deval.cli.dynamics import register as register_dynamics
from deval.cli.dynamics import render_run
from deval.cli.recommend import register as register_recommend
from deval.cli.recommend import render_run as render_recommend_run
from deval.cli.validate import run_app
from deval.errors import ConfigError, RunInterrupted
from deval.jsonio import dumps
from deval.core.tasks import TaskCatalog, builtin_tasks_dir
from deval.core.validsets import builtin_valid_sets, builtin_valid_sets_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Profile how a language model samples: P_token against P_task, D-model or E-model. "
                       "Errors are one line; --debug (anywhere) adds the traceback.")
VALID_SET_PREVIEW = 6  # members shown per valid-set task in 'deval tasks'


def _print_version(value: bool) -> None:
    if value:
        from deval.version import __version__

        print(f"deval {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Profile how a language model samples: P_token against P_task, D-model or E-model."""


@app.command()
def profile(
    backend: BackendOpt = "local",
    model: ModelOpt = None,
    task: TaskOpt = DEFAULT_TASKS,
    tasks_dir: TasksDirOpt = [],
    runs: RunsOpt = 10,
    steps: StepsOpt = None,
    temperature: TemperatureOpt = 1.0,
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
    batch: BatchOpt = None,
    ctx: CtxOpt = None,
    raw_prompt: RawPromptOpt = False,
    flash_attn: FlashAttnOpt = None,
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
    tokenizer: TokenizerOpt = None,
) -> None:
    """Profile a model on tasks: e-score, ATVD, result TVD, ... and the D/E verdict."""
    from deval.analyses.profile import execute, load_config  # analyses load numpy: not at start-up
    from deval.report.profile import render_profile
    from deval.runs.store import RunDir

    if resume is not None:
        config = with_given_again(load_config(resume), base_url, api_key_env)
        check_resume(RunDir(resume).manifest()["config"], resume)
    else:
        config = profile_config(locals(), temperature)
    try:
        with progress_bar("measuring", quiet=json_out) as bar:
            result = execute(config, out=out_dir, resume=resume, progress=bar)
    except RunInterrupted as exc:
        raise interrupted("profile", exc.path) from None
    if json_out:
        print(dumps(json_summary(result)))
    else:
        first_runs = RunDir(result.path).first_run_steps()  # the heat strips show one run: the rest stays on disk
        render_profile(result.summary, {t.name: t for t in config.tasks}, first_runs, console=out,
                       where=str(result.path))


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A run directory written by 'deval profile --out'."),
           json_out: bool = typer.Option(False, "--json", help="Print only the summary JSON."),
           plots: Optional[Path] = typer.Option(None, "--plots", help="Write the run's figures (PNG and SVG) here."),
           html_file: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML report here."),
           steps_out: str = typer.Option(None, "--steps", help="Print one row per item position: csv | json."),
           ) -> None:
    """Re-render a finished run from its files, without touching a model; --html / --plots write a page / figures,
    --steps the per-position rows."""
    from deval.analyses.layers import SCHEMA as LAYERS_SCHEMA
    from deval.analyses.result import command_for, load
    from deval.report.layers import render_layers
    from deval.report.profile import render_profile
    from deval.runs.store import RunDir

    result = load(run_dir)
    summary = result.summary
    if steps_out is not None:
        _print_steps(RunDir(result.path), summary, steps_out)
        return
    if json_out:
        print(dumps(RunDir(result.path).summary()))
        return
    try:
        if plots is not None or html_file is not None:
            from deval.report.html import write
            from deval.report.plots import save_figures

            if plots is not None:
                written = save_figures(result.figures(), plots)
                out.print(f"wrote {len(written)} files (PNG and SVG) to {plots}", highlight=False, soft_wrap=True)
            if html_file is not None:
                from deval.report.html import run_page

                write(html_file, run_page(summary, result.context(), where=str(result.path)))
                out.print(f"wrote {html_file} (self-contained: open it in any browser, offline)", highlight=False,
                          soft_wrap=True)
            return
        if summary.get("schema") == LAYERS_SCHEMA:
            render_layers(summary, console=out, where=str(result.path))
            return
        if render_run(summary, result.path, out) or render_recommend_run(summary, result.path, out):  # not profile
            return
        context = result.context(first_run_only=True)  # the heat strips show one run: the rest stays on disk
        render_profile(summary, context["tasks"], context["steps"], console=out, where=str(result.path))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise damaged_summary(result.path, command_for(result.manifest), exc) from None


def _print_steps(rd, summary: dict, fmt: str) -> None:
    from deval.analyses.profile import ProfileConfig
    from deval.analyses.result import command_for
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
register_recommend(app)

from deval.cli.probe import probe_command  # noqa: E402  (the probe command lives in its own module)

app.command("probe")(probe_command)

from deval.cli.compare import compare_command  # noqa: E402

app.command("compare")(compare_command)
from deval.cli.layers import layers_command  # noqa: E402  (the logit lens lives in its own module)

app.command("layers")(layers_command)
from deval.cli.code import code_command  # noqa: E402

app.command("code")(code_command)


def main() -> None:
    sys.exit(run_app(app, console=err))


if __name__ == "__main__":
    main()
