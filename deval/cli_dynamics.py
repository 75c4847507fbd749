"""CLI commands for sampling dynamics: sweep, calibration, diversity; and their re-rendering by 'deval report'."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer

from deval import backends as registry
from deval.backend import FILTER_ORDERS, Filters
from deval.errors import ConfigError
from deval.profile import ProfileConfig
from deval.tasks import MODES, TaskCatalog


def _filters(top_k, top_p, min_p, filter_order) -> Filters:
    from deval.cli import check_range

    if filter_order not in FILTER_ORDERS:
        raise ConfigError(f"--filter-order must be one of {', '.join(FILTER_ORDERS)} (got {filter_order})")
    check_range("--top-k", top_k, lo=1)
    check_range("--top-p", top_p, lo=0, hi=1, lo_open=True)
    check_range("--min-p", min_p, lo=0, hi=1)
    return Filters(top_k=top_k, top_p=top_p, min_p=min_p, order=filter_order)


def _default_dir(kind: str, model: str) -> Path:
    name = Path(model).stem if model else "model"
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{name}"


def sweep(
    backend: str = typer.Option("local", help="Backend name or preset (see 'deval backends')."),
    model: Optional[str] = typer.Option(None, help="Model: a GGUF path (local), a model name (HTTP), d/e/... (mock)."),
    temperatures: str = typer.Option("0.5,0.75,1,1.25,1.5,2", help="Temperatures, comma-separated."),
    task: List[str] = typer.Option(["extreme", "flat"], "--task", help="Task name or .toml path; repeatable."),
    tasks_dir: List[Path] = typer.Option([], "--tasks-dir", help="Extra directory of task TOML files."),
    runs: int = typer.Option(10, help="Runs per task and temperature."),
    steps: Optional[int] = typer.Option(None, help="Item positions per run (default: the task's)."),
    seed: int = typer.Option(0, help="Seed for sampling and bootstrap intervals."),
    mode: Optional[str] = typer.Option(None, help="sequence | independent (default: the task's)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep the k most likely tokens."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Keep the smallest set reaching mass p."),
    min_p: Optional[float] = typer.Option(None, "--min-p", help="Keep tokens with p >= min_p * max p."),
    filter_order: str = typer.Option("filters-first", help="filters-first (llama.cpp) | temperature-first (HF)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<time>-sweep-<model>)."),
    resume: Optional[Path] = typer.Option(None, help="Finish an interrupted sweep in this directory."),
    json_out: bool = typer.Option(False, "--json", help="Print only the summary JSON on stdout."),
    gpu_layers: Optional[int] = typer.Option(None, help="local: layers to offload to the GPU (-1 all)."),
    threads: Optional[int] = typer.Option(None, help="local: CPU threads."),
    ctx: Optional[int] = typer.Option(None, help="local: context size in tokens."),
    raw_prompt: bool = typer.Option(False, "--raw-prompt", help="local: plain text prompt, no chat template."),
    # -- OpenAI-compatible backends (openai and the presets in 'deval backends'), as for 'deval profile' --
    base_url: Optional[str] = typer.Option(None, "--base-url",
                                           help="http: server URL, e.g. http://127.0.0.1:8000/v1 (again on --resume "
                                                "if it held secrets)."),
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
    """Profile at several temperatures: e-score, ATVD, result TVD against T, measured and derived."""
    from deval.cli import backend_options, check_range, out
    from deval.report_dynamics import render_sweep
    from deval.store import dumps
    from deval.sweep import SweepConfig, create_sweep_dir, load_sweep_config, parse_temperatures, run_sweep

    if resume is not None:
        config = load_sweep_config(resume)
        path = Path(resume)
        if base_url is not None:  # the manifest holds the URL redacted when it had secrets: given again here
            stored = dict(config.base.backend_options) | backend_options(config.base.backend, base_url=base_url)
            config = replace(config, base=replace(config.base, backend_options=tuple(sorted(stored.items()))))
    else:
        if mode is not None and mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)} (got {mode})")
        check_range("--runs", runs, lo=1)
        check_range("--steps", steps, lo=1)
        filters = _filters(top_k, top_p, min_p, filter_order)
        catalog = TaskCatalog.load(list(tasks_dir))
        chosen = tuple(catalog.get(ref) for ref in dict.fromkeys(task))
        options = backend_options(backend, gpu_layers=gpu_layers, threads=threads, ctx=ctx, raw_prompt=raw_prompt,
                                  base_url=base_url, api_key_env=api_key_env, concurrency=concurrency, route=route,
                                  top_logprobs=top_logprobs, timeout=timeout, retry_budget=retry_budget,
                                  max_tokens=max_tokens, cache_dir=str(cache_dir) if cache_dir else None,
                                  no_cache=no_cache, no_probe=no_probe)
        base = ProfileConfig(backend=backend, model=model or "", tasks=chosen, runs=runs, steps=steps, seed=seed,
                             mode=mode, filters=filters, backend_options=tuple(sorted(options.items())))
        config = SweepConfig(base=base, temperatures=parse_temperatures(temperatures))
        path = None
    engine = registry.create(config.base.backend, config.base.model or None, **dict(config.base.backend_options))
    try:
        if path is None:
            config = SweepConfig(base=ProfileConfig(**{**config.base.__dict__, "model": engine.model}),
                                 temperatures=config.temperatures)
            path = create_sweep_dir(out_dir or _default_dir("sweep", engine.model), config, engine)
        summary = run_sweep(config, engine, path)
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
    from deval.validity_runs import require_exact, require_exact_class

    require_exact_class(registry.backend_class(backend), backend)  # before an inexact backend asks for a key
    engine = registry.create(backend, model, **options)
    try:
        return require_exact(engine, backend)
    except ConfigError:
        engine.close()
        raise


def _interrupted(command: str, path: Path) -> typer.Exit:
    from deval.cli import err

    err.print(f"interrupted: every finished record is in {path}; finish with: deval {command} --resume {path}",
              highlight=False, soft_wrap=True)
    return typer.Exit(130)


def calibration(
    task: List[str] = typer.Option(["vowels"], "--task", help="Valid-set task name or .toml path; repeatable."),
    backend: str = typer.Option("local", help="A backend with exact next-token distributions (local)."),
    model: Optional[str] = typer.Option(None, help="GGUF path (default: the embedded SmolLM2)."),
    samples: int = typer.Option(50, help="Sampled answers per rule (sequence level)."),
    temperature: float = typer.Option(1.0, help="Temperature the rules and samples use (> 0)."),
    top_ks: str = typer.Option("1,5,20,50", "--top-ks", help="top-k settings to score, comma-separated."),
    top_ps: str = typer.Option("0.5,0.9,0.95", "--top-ps", help="top-p settings to score."),
    min_ps: str = typer.Option("0.05,0.1,0.2", "--min-ps", help="min-p settings to score."),
    filter_order: str = typer.Option("filters-first", help="filters-first (llama.cpp) | temperature-first (HF)."),
    seed: int = typer.Option(0, help="Seed for sampling."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<time>-calibration-…)."),
    resume: Optional[Path] = typer.Option(None, help="Finish an interrupted calibration run in this directory."),
    json_out: bool = typer.Option(False, "--json", help="Print only the summary JSON on stdout."),
    gpu_layers: Optional[int] = typer.Option(None, help="local: layers to offload to the GPU (-1 all)."),
    threads: Optional[int] = typer.Option(None, help="local: CPU threads."),
    raw_prompt: bool = typer.Option(False, "--raw-prompt", help="local: plain text prompt, no chat template."),
) -> None:
    """Order and shape calibration on a task with a known valid set: cutoff rules against the oracle."""
    from deval.calibration import rule_grid
    from deval.cli import backend_options, check_range, out
    from deval.report_dynamics import render_calibration
    from deval.store import create_run_dir, dumps
    from deval.validity_runs import CalibrationConfig, calibration_manifest, load_calibration_config, run_calibration
    from deval.validsets import get_valid_set

    if resume is not None:
        config = load_calibration_config(resume)
    else:
        check_range("--samples", samples, lo=1)
        check_range("--temperature", temperature, lo=0, lo_open=True)
        if filter_order not in FILTER_ORDERS:
            raise ConfigError(f"--filter-order must be one of {', '.join(FILTER_ORDERS)} (got {filter_order})")
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
            path = create_run_dir(out_dir or _default_dir("calibration", engine.model),
                                  calibration_manifest(config, engine.describe()))
        else:
            path = Path(resume)
        try:
            summary = run_calibration(config, engine, path, engine.describe())
        except KeyboardInterrupt:
            raise _interrupted("calibration", path) from None
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
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Keep the k most likely tokens."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Keep the smallest set reaching mass p."),
    min_p: Optional[float] = typer.Option(None, "--min-p", help="Keep tokens with p >= min_p * max p."),
    filter_order: str = typer.Option("filters-first", help="filters-first (llama.cpp) | temperature-first (HF)."),
    seed: int = typer.Option(0, help="Seed for sampling (the same for every model)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<time>-diversity-…)."),
    resume: Optional[Path] = typer.Option(None, help="Finish an interrupted diversity run in this directory."),
    json_out: bool = typer.Option(False, "--json", help="Print only the summary JSON on stdout."),
    gpu_layers: Optional[int] = typer.Option(None, help="local: layers to offload to the GPU (-1 all)."),
    threads: Optional[int] = typer.Option(None, help="local: CPU threads."),
    raw_prompt: bool = typer.Option(False, "--raw-prompt", help="local: plain text prompt, no chat template."),
) -> None:
    """Distinct valid outputs against samples drawn, next to the ideal uniform sampler's curve."""
    from deval.cli import backend_options, check_range, out
    from deval.report_dynamics import render_diversity
    from deval.store import create_run_dir, dumps
    from deval.validity_runs import DiversityConfig, diversity_manifest, load_diversity_config, run_diversity
    from deval.validsets import get_valid_set

    if resume is not None:
        config = load_diversity_config(resume)
        refs = [(label, ref) for label, ref in config.models]
    else:
        check_range("--samples", samples, lo=1)
        check_range("--temperature", temperature, lo=0, lo_open=True)
        options = backend_options(backend, gpu_layers=gpu_layers, threads=threads, raw_prompt=raw_prompt)
        config = DiversityConfig(task=get_valid_set(task), samples=samples, temperature=temperature, seed=seed,
                                 filters=_filters(top_k, top_p, min_p, filter_order), backend=backend,
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
            path = create_run_dir(out_dir or _default_dir("diversity", next(iter(engines.values())).model),
                                  diversity_manifest(config, {k: e.describe() for k, e in engines.items()}))
        else:
            path = Path(resume)
        try:
            summary = run_diversity(config, engines, path, {k: e.describe() for k, e in engines.items()})
        except KeyboardInterrupt:
            raise _interrupted("diversity", path) from None
    finally:
        for engine in engines.values():
            engine.close()
    if json_out:
        print(dumps(summary))
    else:
        render_diversity(summary, console=out, where=str(path))


def render_run(summary: dict, path: Path, console) -> bool:
    """Re-render a sweep, calibration or diversity run; False when the summary is not one of these."""
    from deval import calibration, diversity, report_dynamics, sweep

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
