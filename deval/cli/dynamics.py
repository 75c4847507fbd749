"""CLI commands for sampling dynamics: sweep, calibration, diversity; and their re-rendering by 'deval report'."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from deval import backends as registry
from deval.cli.common import (DEFAULT_TASKS, ApiKeyEnvOpt, BackendOpt, BaseUrlOpt, CacheDirOpt, ConcurrencyOpt,
                              CtxOpt, FilterOrderOpt, PositionsOpt, MinMassOpt, GpuLayersOpt, JsonOpt, MaxTokensOpt, MinPOpt, ModelOpt, ModeOpt,
                              NoCacheOpt, NoProbeOpt, OutOpt, RawPromptOpt, ResumeOpt, RetryBudgetOpt, RouteOpt, RunsOpt,
                              SeedOpt, StepsOpt, TaskOpt, TasksDirOpt, ThreadsOpt, TimeoutOpt, TopKOpt, TopLogprobsOpt,
                              TopPOpt,
                              backend_options, check_local, check_range, default_dir, filters_from, interrupted, out,
                              profile_config,
                              with_given_again)
from deval.errors import ConfigError


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
    """Profile at several temperatures: e-score, ATVD, result TVD against T, measured and derived."""
    from deval.report.dynamics import render_sweep
    from deval.runs.store import dumps
    from deval.analyses.sweep import SweepConfig, create_sweep_dir, load_sweep_config, parse_temperatures, run_sweep

    if resume is not None:
        config = load_sweep_config(resume)
        config = replace(config, base=with_given_again(config.base, base_url, api_key_env))
        path = Path(resume)
    else:
        config = SweepConfig(base=profile_config(locals()), temperatures=parse_temperatures(temperatures))
        path = None
    engine = registry.create(config.base.backend, config.base.model or None, **dict(config.base.backend_options))
    try:
        if path is None:
            config = replace(config, base=replace(config.base, model=engine.model))
            path = create_sweep_dir(out_dir or default_dir("sweep", engine.model), config, engine)
        try:
            summary = run_sweep(config, engine, path)
        except KeyboardInterrupt:
            raise interrupted("sweep", path) from None
    finally:
        engine.close()
    if json_out:
        print(dumps(summary))
    else:
        render_sweep(summary, console=out, where=str(path))


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


def _exact_backend(backend: str, model: Optional[str], options: dict):
    from deval.analyses.validity_runs import require_exact, require_exact_class

    require_exact_class(registry.backend_class(backend), backend)  # before an inexact backend asks for a key
    engine = registry.create(backend, model, **options)
    try:
        return require_exact(engine, backend)
    except ConfigError:
        engine.close()
        raise


def calibration(
    task: List[str] = typer.Option(["vowels"], "--task", help="Valid-set task name or .toml path; repeatable."),
    backend: str = typer.Option("local", help="A backend with exact next-token distributions (local)."),
    model: Optional[str] = typer.Option(None, help="GGUF path (default: the embedded SmolLM2)."),
    samples: int = typer.Option(50, help="Sampled answers per rule (sequence level)."),
    temperature: float = typer.Option(1.0, help="Temperature the rules and samples use (> 0)."),
    top_ks: str = typer.Option("1,5,20,50", "--top-ks", help="top-k settings to score, comma-separated."),
    top_ps: str = typer.Option("0.5,0.9,0.95", "--top-ps", help="top-p settings to score."),
    min_ps: str = typer.Option("0.05,0.1,0.2", "--min-ps", help="min-p settings to score."),
    filter_order: FilterOrderOpt = "filters-first",
    seed: int = typer.Option(0, help="Seed for sampling."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<time>-calibration-…)."),
    resume: Optional[Path] = typer.Option(None, help="Finish an interrupted calibration run in this directory."),
    json_out: JsonOpt = False,
    gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    raw_prompt: RawPromptOpt = False,
) -> None:
    """Order and shape calibration on a task with a known valid set: cutoff rules against the oracle."""
    from deval.analyses.calibration import rule_grid
    from deval.report.dynamics import render_calibration
    from deval.runs.store import create_run_dir, dumps
    from deval.analyses.validity_runs import CalibrationConfig, calibration_manifest, load_calibration_config, run_calibration
    from deval.core.validsets import get_valid_set

    if resume is not None:
        config = load_calibration_config(resume)
    else:
        check_range("--samples", samples, lo=1)
        check_range("--temperature", temperature, lo=0, lo_open=True)
        check_local(None, threads, gpu_layers)
        filters_from(None, None, None, filter_order)  # checks the order
        rules = rule_grid(_floats(top_ks, "--top-ks", 1, 10**7, integer=True), _floats(top_ps, "--top-ps", 1e-9, 1),
                          _floats(min_ps, "--min-ps", 0, 1), order=filter_order)
        tasks = tuple(get_valid_set(ref) for ref in dict.fromkeys(task))
        options = backend_options(backend, gpu_layers=gpu_layers, threads=threads, raw_prompt=raw_prompt)
        config = CalibrationConfig(tasks=tasks, rules=tuple(rules), samples=samples, temperature=temperature,
                                   seed=seed, filter_order=filter_order, backend=backend, model=model or "",
                                   backend_options=tuple(sorted(options.items())))
    engine = _exact_backend(config.backend, config.model or None, dict(config.backend_options))
    try:
        if resume is None:
            config = replace(config, model=engine.model)
            path = create_run_dir(out_dir or default_dir("calibration", engine.model),
                                  calibration_manifest(config, engine.describe()))
        else:
            path = Path(resume)
        try:
            summary = run_calibration(config, engine, path, engine.describe())
        except KeyboardInterrupt:
            raise interrupted("calibration", path) from None
    finally:
        engine.close()
    if json_out:
        print(dumps(summary))
    else:
        render_calibration(summary, console=out, where=str(path))


def diversity(
    task: str = typer.Option("us-states", "--task", help="Valid-set task name or .toml path."),
    samples: int = typer.Option(100, help="Samples to draw per model."),
    backend: str = typer.Option("local", help="A backend with exact next-token distributions (local)."),
    model: Optional[str] = typer.Option(None, help="GGUF path (default: the embedded SmolLM2)."),
    compare: List[str] = typer.Option([], "--compare", help="Another model (GGUF path) on the same chart; repeatable."),
    temperature: float = typer.Option(1.0, help="Sampling temperature (> 0)."),
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    filter_order: FilterOrderOpt = "filters-first",
    seed: int = typer.Option(0, help="Seed for sampling (the same for every model)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<time>-diversity-…)."),
    resume: Optional[Path] = typer.Option(None, help="Finish an interrupted diversity run in this directory."),
    json_out: JsonOpt = False,
    gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    raw_prompt: RawPromptOpt = False,
) -> None:
    """Distinct valid outputs against samples drawn, next to the ideal uniform sampler's curve."""
    from deval.report.dynamics import render_diversity
    from deval.runs.store import create_run_dir, dumps
    from deval.analyses.validity_runs import DiversityConfig, diversity_manifest, load_diversity_config, run_diversity
    from deval.core.validsets import get_valid_set

    if resume is not None:
        config = load_diversity_config(resume)
        refs = [(label, ref) for label, ref in config.models]
    else:
        check_range("--samples", samples, lo=1)
        check_range("--temperature", temperature, lo=0, lo_open=True)
        check_local(None, threads, gpu_layers)
        options = backend_options(backend, gpu_layers=gpu_layers, threads=threads, raw_prompt=raw_prompt)
        config = DiversityConfig(task=get_valid_set(task), samples=samples, temperature=temperature, seed=seed,
                                 filters=filters_from(top_k, top_p, min_p, filter_order), backend=backend,
                                 backend_options=tuple(sorted(options.items())))
        refs = [(None, ref) for ref in [model, *compare]]
    engines = {}
    try:
        for label, ref in refs:
            engine = _exact_backend(config.backend, ref or None, dict(config.backend_options))
            if label is None:
                label = Path(engine.model).stem if engine.model else (ref or config.backend)
                while label in engines:
                    label += "'"
            engines[label] = engine
        if resume is None:
            config = replace(config, models=tuple((label, e.model) for label, e in engines.items()))
            path = create_run_dir(out_dir or default_dir("diversity", next(iter(engines.values())).model),
                                  diversity_manifest(config, {k: e.describe() for k, e in engines.items()}))
        else:
            path = Path(resume)
        try:
            summary = run_diversity(config, engines, path, {k: e.describe() for k, e in engines.items()})
        except KeyboardInterrupt:
            raise interrupted("diversity", path) from None
    finally:
        for engine in engines.values():
            engine.close()
    if json_out:
        print(dumps(summary))
    else:
        render_diversity(summary, console=out, where=str(path))


def render_run(summary: dict, path: Path, console) -> bool:
    """Re-render a sweep, calibration or diversity run; False when the summary is not one of these."""
    from deval.analyses import calibration, diversity, sweep
    from deval.report import dynamics as report_dynamics

    renderers = {sweep.SCHEMA: report_dynamics.render_sweep, calibration.SCHEMA: report_dynamics.render_calibration,
                 diversity.SCHEMA: report_dynamics.render_diversity}
    render = renderers.get(summary.get("schema"))
    if render is None:
        return False
    render(summary, console=console, where=str(path))
    return True


def register(app: typer.Typer) -> None:
    app.command()(sweep)
    app.command()(calibration)
    app.command()(diversity)
