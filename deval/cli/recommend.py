"""`deval recommend`: next-item recommendation on MovieLens-format data; and its re-rendering by 'deval report'."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from deval import backends as registry
from deval.cli.common import (ApiKeyEnvOpt, BackendOpt, BaseUrlOpt, BatchOpt, CacheDirOpt, ConcurrencyOpt, CtxOpt,
                              FilterOrderOpt, GpuLayersOpt, JsonOpt, MinPOpt, ModelOpt, NoCacheOpt, NoProbeOpt,
                              RawPromptOpt, RetryBudgetOpt, RouteOpt, ThreadsOpt, TimeoutOpt, TopKOpt, TopPOpt,
                              backend_options, check_local, check_range, default_dir, err, filters_from, interrupted,
                              out)
from deval.errors import ConfigError


def _temperatures(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--temperatures must be numbers separated by commas (got '{text}')") from None
    if not values:
        raise ConfigError("--temperatures needs at least one temperature")
    for v in values:
        check_range("--temperatures", v, lo=0, lo_open=True)
    return tuple(dict.fromkeys(values))


def recommend(
    data: Optional[Path] = typer.Option(None, "--data", help="MovieLens folder: movies.dat+ratings.dat (ML-1M) or "
                                                              "movies.csv+ratings.csv (ml-latest-small)."),
    completions: Optional[Path] = typer.Option(None, "--completions", help="Score a JSONL file of "
                                                                           '{"user","sample","text"} instead of '
                                                                           "generating."),
    users: int = typer.Option(200, help="Users drawn (seeded) from those with a held-out liked movie."),
    history: int = typer.Option(10, help="Liked titles shown in the prompt, before the held-out one."),
    k: int = typer.Option(10, "--k", help="Recommendations asked for (and scored) per answer."),
    samples: int = typer.Option(5, help="Answers sampled per user and temperature."),
    temperatures: str = typer.Option("1", help="Sampling temperatures, comma-separated."),
    seed: int = typer.Option(0, help="Seed for the user draw, sampling and intervals."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Tokens per answer (default 12 per title "
                                                                         "+ 8)."),
    no_ptoken: bool = typer.Option(False, "--no-ptoken", help="Skip the first-slot P_token view (exact backends)."),
    ptoken_budget: int = typer.Option(300, "--ptoken-budget", help="Forward passes per user for the P_token rank."),
    backend: BackendOpt = "local",
    model: ModelOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    filter_order: FilterOrderOpt = "filters-first",
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run directory (default: runs/<time>-recommend-…)."),
    resume: Optional[Path] = typer.Option(None, help="Finish an interrupted recommend run in this directory."),
    json_out: JsonOpt = False,
    gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    batch: BatchOpt = None,
    ctx: CtxOpt = None,
    raw_prompt: RawPromptOpt = False,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = None,
    concurrency: ConcurrencyOpt = None,
    route: RouteOpt = None,
    timeout: TimeoutOpt = None,
    retry_budget: RetryBudgetOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    no_probe: NoProbeOpt = False,
) -> None:
    """Next-item recommendation on MovieLens data: hit@K, can-hit, hallucination, repeat, diversity, popularity."""
    from deval.analyses.recommend.run import RecommendConfig, load_config, start
    from deval.report.recommend import render_recommend
    from deval.runs.store import dumps

    if resume is not None:
        config = load_config(resume)
        again = {k_: v for k_, v in (("base_url", base_url), ("api_key_env", api_key_env)) if v is not None}
        config = replace(config, backend_options=tuple(sorted({**dict(config.backend_options), **again}.items())))
    else:
        if data is None:
            raise ConfigError("--data DIR is required: the folder of a MovieLens copy (movies.dat and ratings.dat, "
                              "or movies.csv and ratings.csv)")
        for name, value in (("--users", users), ("--history", history), ("--k", k), ("--samples", samples),
                            ("--max-tokens", max_tokens), ("--ptoken-budget", ptoken_budget)):
            check_range(name, value, lo=1)
        check_local(ctx, threads, gpu_layers)
        options = {} if completions else backend_options(
            backend, gpu_layers=gpu_layers, threads=threads, batch=batch, ctx=ctx, raw_prompt=raw_prompt,
            base_url=base_url, api_key_env=api_key_env, concurrency=concurrency, route=route, timeout=timeout,
            retry_budget=retry_budget, cache_dir=cache_dir, no_cache=no_cache, no_probe=no_probe)
        if completions and not completions.is_file():
            raise ConfigError(f"--completions {completions} not found; pass a JSONL file of "
                              '{"user", "sample", "text"} lines')
        config = RecommendConfig(
            data=str(data.resolve()), users=users, history=history, k=k, samples=samples,
            temperatures=_temperatures(temperatures), seed=seed, max_tokens=max_tokens or 0,
            filters=filters_from(top_k, top_p, min_p, filter_order), backend="completions" if completions else backend,
            model=model or "", backend_options=tuple(sorted(options.items())), ptoken=not no_ptoken,
            ptoken_budget=ptoken_budget, completions=str(completions.resolve()) if completions else "")
    engine = None if config.completions else registry.create(config.backend, config.model or None,
                                                            **dict(config.backend_options))
    try:
        describe = engine.describe() if engine else {"name": "completions", "model": config.completions}
        if resume is None:
            if engine is not None:
                config = replace(config, model=engine.model)
            name = engine.model if engine else Path(config.completions).stem
            config, path = start(config, out_dir or default_dir("recommend", name), describe)
        else:
            path = Path(resume)
        try:
            summary = _run(config, engine, path, describe, quiet=json_out)
        except KeyboardInterrupt:
            raise interrupted("recommend", path) from None
    finally:
        if engine is not None:
            engine.close()
    if json_out:
        print(dumps(summary))
    else:
        render_recommend(summary, console=out, where=str(path))


def _run(config, engine, path: Path, describe: dict, quiet: bool) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from deval.analyses.recommend.run import exact_engine, run_recommend

    if quiet or not err.is_terminal or engine is None:
        return run_recommend(config, engine, path, describe)
    ptoken = config.ptoken and exact_engine(engine)
    total = config.users * (config.samples * len(config.temperatures) + ptoken)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task("recommending", total=total)
        return run_recommend(config, engine, path, describe, on_record=lambda: progress.advance(bar))


def render_run(summary: dict, path: Path, console) -> bool:
    """Re-render a recommend run; False when the summary is not one."""
    from deval.analyses.recommend.run import SCHEMA
    from deval.report.recommend import render_recommend

    if summary.get("schema") != SCHEMA:
        return False
    render_recommend(summary, console=console, where=str(path))
    return True


def register(app: typer.Typer) -> None:
    app.command()(recommend)
