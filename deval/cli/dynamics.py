"""CLI commands for sampling dynamics: sweep, calibration, diversity; and their re-rendering by 'deval report'."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from deval.cli.common import (DEFAULT_TASKS, ApiKeyEnvOpt, BatchOpt, BackendOpt, BaseUrlOpt, CacheDirOpt,
                              ConcurrencyOpt, CtxOpt, FilterOrderOpt, PositionsOpt, MinMassOpt, GpuLayersOpt, JsonOpt,
                              MaxTokensOpt, MinPOpt, ModelOpt, ModeOpt, NoCacheOpt, NoProbeOpt, OutOpt, RawPromptOpt,
                              FlashAttnOpt,
                              ResumeOpt, RetryBudgetOpt, RouteOpt, RunsOpt, SeedOpt, StepsOpt, TaskOpt, TasksDirOpt,
                              ThreadsOpt, TimeoutOpt, TopKOpt, TopLogprobsOpt, SamplesOpt, TemperatureOpt, TopPOpt,
                              backend_options, check_local, check_range, check_resume, filters_from, interrupted,
                              json_summary, out, profile_config, progress_bar, with_given_again)
from deval.errors import ConfigError, RunInterrupted
from deval.jsonio import dumps


def sweep(
    backend: BackendOpt = "local",
    model: ModelOpt = None,
    temperatures: str = typer.Option("0.5,0.75,1,1.25,1.5,2", help="Temperatures, comma-separated."),
    task: TaskOpt = DEFAULT_TASKS,
    tasks_dir: TasksDirOpt = [],
    runs: RunsOpt = 10,
    steps: StepsOpt = None,
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
) -> None:
    """Profile at several temperatures: e-score, ATVD, result TVD against T, measured and derived."""
    from deval.analyses.sweep import SweepConfig, execute, load_sweep_config, parse_temperatures
    from deval.report.dynamics import render_sweep

    if resume is not None:
        config = load_sweep_config(resume)
        check_resume(config.to_dict() | config.base.to_dict(), resume)
        config = replace(config, base=with_given_again(config.base, base_url, api_key_env))
    else:
        config = SweepConfig(base=profile_config(locals()), temperatures=parse_temperatures(temperatures))
    try:
        with progress_bar("sweeping", quiet=json_out) as bar:
            result = execute(config, out=out_dir, resume=resume, progress=bar)
    except RunInterrupted as exc:
        raise interrupted("sweep", exc.path) from None
    if json_out:
        print(dumps(json_summary(result)))
    else:
        render_sweep(result.summary, console=out, where=str(result.path))


def _floats(text: str, name: str, lo: float, hi: float, integer: bool = False) -> tuple:
    try:
        values = [int(v) if integer else float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be {'integers' if integer else 'numbers'} separated by commas "
                          f"(got '{text}')") from None
    for v in values:
        if not lo <= v <= hi:
            raise ConfigError(f"{name}: {v} is outside [{lo:g}, {hi:g}]")
    return tuple(values)


def calibration(
    task: List[str] = typer.Option(["vowels"], "--task", help="Valid-set task name or .toml path; repeatable."),
    backend: str = typer.Option("local", help="A backend with exact next-token distributions (local)."),
    model: Optional[str] = typer.Option(None, help="GGUF path (default: the embedded SmolLM2)."),
    samples: SamplesOpt = 50,
    temperature: TemperatureOpt = 1.0,
    top_ks: str = typer.Option("1,5,20,50", "--top-ks", help="top-k settings to score, comma-separated."),
    top_ps: str = typer.Option("0.5,0.9,0.95", "--top-ps", help="top-p settings to score."),
    min_ps: str = typer.Option("0.05,0.1,0.2", "--min-ps", help="min-p settings to score."),
    filter_order: FilterOrderOpt = "filters-first",
    seed: SeedOpt = 0,
    out_dir: OutOpt = None,
    resume: Optional[Path] = typer.Option(None, help="Finish an interrupted calibration run in this directory."),
    json_out: JsonOpt = False,
    gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    raw_prompt: RawPromptOpt = False,
) -> None:
    """Order and shape calibration on a task with a known valid set: cutoff rules against the oracle."""
    from deval.analyses.validity_execute import execute_calibration
    from deval.analyses.validity_runs import load_calibration_config
    from deval.report.dynamics import render_calibration

    if resume is not None:
        config = load_calibration_config(resume)
        check_resume(config.to_dict(), resume)
    else:
        config = calibration_config(locals())
    try:
        with progress_bar("calibrating", quiet=json_out) as bar:
            result = execute_calibration(config, out=out_dir, resume=resume, progress=bar)
    except RunInterrupted as exc:
        raise interrupted("calibration", exc.path) from None
    if json_out:
        print(dumps(json_summary(result)))
    else:
        render_calibration(result.summary, console=out, where=str(result.path))


def diversity(
    task: str = typer.Option("us-states", "--task", help="Valid-set task name or .toml path."),
    samples: SamplesOpt = 100,
    backend: str = typer.Option("local", help="A backend with exact next-token distributions (local)."),
    model: Optional[str] = typer.Option(None, help="GGUF path (default: the embedded SmolLM2)."),
    compare: List[str] = typer.Option([], "--compare", help="Another model (GGUF path) on the same chart; repeatable."),
    temperature: TemperatureOpt = 1.0,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    filter_order: FilterOrderOpt = "filters-first",
    seed: SeedOpt = 0,
    out_dir: OutOpt = None,
    resume: Optional[Path] = typer.Option(None, help="Finish an interrupted diversity run in this directory."),
    json_out: JsonOpt = False,
    gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    raw_prompt: RawPromptOpt = False,
) -> None:
    """Distinct valid outputs against samples drawn, next to the ideal uniform sampler's curve."""
    from deval.analyses.validity_execute import execute_diversity
    from deval.analyses.validity_runs import load_diversity_config
    from deval.report.dynamics import render_diversity

    if resume is not None:
        config = load_diversity_config(resume)
        check_resume(config.to_dict(), resume)
    else:
        config = diversity_config(locals())
    try:
        with progress_bar("sampling", quiet=json_out) as bar:
            result = execute_diversity(config, models=[model, *compare], out=out_dir, resume=resume, progress=bar)
    except RunInterrupted as exc:
        raise interrupted("diversity", exc.path) from None
    if json_out:
        print(dumps(json_summary(result)))
    else:
        render_diversity(result.summary, console=out, where=str(result.path))


def calibration_config(o: dict):
    """Validate the calibration options (the command's locals()) and build its CalibrationConfig."""
    from deval.analyses.calibration import rule_grid
    from deval.analyses.validity_runs import CalibrationConfig
    from deval.core.validsets import get_valid_set

    check_range("--samples", o["samples"], lo=1)
    check_range("--temperature", o["temperature"], lo=0, lo_open=True)
    check_local(None, o["threads"], o["gpu_layers"])
    filters_from(None, None, None, o["filter_order"])  # checks the order
    rules = rule_grid(_floats(o["top_ks"], "--top-ks", 1, 10**7, integer=True),
                      _floats(o["top_ps"], "--top-ps", 1e-9, 1), _floats(o["min_ps"], "--min-ps", 0, 1),
                      order=o["filter_order"])
    tasks = tuple(get_valid_set(ref) for ref in dict.fromkeys(o["task"]))
    options = backend_options(o["backend"], gpu_layers=o["gpu_layers"], threads=o["threads"],
                              raw_prompt=o["raw_prompt"])
    return CalibrationConfig(tasks=tasks, rules=tuple(rules), samples=o["samples"], temperature=o["temperature"],
                             seed=o["seed"], filter_order=o["filter_order"], backend=o["backend"],
                             model=o["model"] or "", backend_options=tuple(sorted(options.items())))


def diversity_config(o: dict):
    """Validate the diversity options (the command's locals()) and build its DiversityConfig."""
    from deval.analyses.validity_runs import DiversityConfig
    from deval.core.validsets import get_valid_set

    check_range("--samples", o["samples"], lo=1)
    check_range("--temperature", o["temperature"], lo=0, lo_open=True)
    check_local(None, o["threads"], o["gpu_layers"])
    options = backend_options(o["backend"], gpu_layers=o["gpu_layers"], threads=o["threads"],
                              raw_prompt=o["raw_prompt"])
    return DiversityConfig(task=get_valid_set(o["task"]), samples=o["samples"], temperature=o["temperature"],
                           seed=o["seed"], filters=filters_from(o["top_k"], o["top_p"], o["min_p"], o["filter_order"]),
                           backend=o["backend"], backend_options=tuple(sorted(options.items())))


def render_run(summary: dict, path: Path, console) -> bool:
    """Re-render a sweep, calibration, diversity or code run; False when the summary is not one of these."""
    from deval.analyses import calibration, diversity, sweep
    from deval.report import code as report_code
    from deval.report import dynamics as report_dynamics

    renderers = {sweep.SCHEMA: report_dynamics.render_sweep, calibration.SCHEMA: report_dynamics.render_calibration,
                 diversity.SCHEMA: report_dynamics.render_diversity, report_code.SCHEMA: report_code.render_code}
    render = renderers.get(summary.get("schema"))
    if render is None:
        return False
    render(summary, console=console, where=str(path))
    return True


def register(app: typer.Typer) -> None:
    app.command()(sweep)
    app.command()(calibration)
    app.command()(diversity)
