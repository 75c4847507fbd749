"""`deval code`: HumanEval pass@k, Δpass and solution diversity on any backend, every candidate sandboxed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from deval import backends as registry
from deval.cli.common import (ApiKeyEnvOpt, BackendOpt, BaseUrlOpt, BatchOpt, CacheDirOpt, ConcurrencyOpt, CtxOpt,
                              FilterOrderOpt, GpuLayersOpt, JsonOpt, MinPOpt, ModelOpt, NoCacheOpt, NoProbeOpt, OutOpt,
                              ResumeOpt, RetryBudgetOpt, SeedOpt, ThreadsOpt, TimeoutOpt, TopKOpt, TopPOpt,
                              backend_options, check_local, default_dir, err, filters_from, interrupted, out)
from deval.errors import ConfigError

CODE_BACKEND_OPTIONS = ("gpu_layers", "threads", "batch", "ctx", "base_url", "api_key_env", "concurrency",
                        "timeout", "retry_budget", "cache_dir", "no_cache", "no_probe", "script")


def code_command(
    backend: BackendOpt = "local",
    model: ModelOpt = None,
    samples: int = typer.Option(10, help="Samples per problem and temperature (n)."),
    temperature: str = typer.Option("0.8", help="Temperatures, comma-separated, e.g. 0.2,0.8,1.2."),
    problems: Optional[str] = typer.Option(None, help="Problem numbers and ranges, e.g. 0-19,25 (default all 164)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N selected problems."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Generation limit per sample, in tokens."),
    raw: bool = typer.Option(False, "--raw", help="Continue the prompt as is (no chat template, no instructions)."),
    seed: SeedOpt = 0,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    filter_order: FilterOrderOpt = "filters-first",
    completions: Optional[Path] = typer.Option(
        None, "--completions", help='Score a JSONL file of {"task_id", "completion"} lines instead of generating.'),
    with_profile: Optional[Path] = typer.Option(
        None, "--with-profile", help="A 'deval profile' run directory whose D/E verdict is shown beside."),
    workers: Optional[int] = typer.Option(None, help="Sandboxed programs run at once (default: CPU count)."),
    exec_timeout: float = typer.Option(15.0, "--exec-timeout", help="Wall-clock seconds per candidate (CPU: the same)."),
    sandbox: Optional[str] = typer.Option(None, help="bwrap | unshare | rlimits (default: the strongest available)."),
    allow_weak_sandbox: bool = typer.Option(False, "--allow-weak-sandbox",
                                            help="Run with resource limits alone where no namespaces are available."),
    mock_script: Optional[Path] = typer.Option(None, "--mock-script", help="mock: JSON file prompt -> texts."),
    out_dir: OutOpt = None,
    resume: ResumeOpt = None,
    json_out: JsonOpt = False,
    gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    batch: BatchOpt = None,
    ctx: CtxOpt = None,
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = None,
    concurrency: ConcurrencyOpt = None,
    timeout: TimeoutOpt = None,
    retry_budget: RetryBudgetOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    no_probe: NoProbeOpt = False,
) -> None:
    """HumanEval: pass@1, pass@k, Δpass = pass@k - pass@1 and distinct solutions per temperature (sandboxed)."""
    from deval.analyses.code.run import CodeConfig, open_run, parse_temperatures, run_code
    from deval.analyses.code.sandbox import Limits
    from deval.report.code import render_code
    from deval.runs.store import dumps

    if resume is not None:
        config, path = open_run(resume, None)
        again = {k: v for k, v in (("base_url", base_url), ("api_key_env", api_key_env)) if v is not None}
        if again:
            config = replace(config, backend_options=tuple(sorted((dict(config.backend_options) | again).items())))
    else:
        check_local(ctx, threads, gpu_layers)
        if exec_timeout <= 0:
            raise ConfigError(f"--exec-timeout must be > 0 (got {exec_timeout})")
        given = {k: v for k, v in locals().items() if k in CODE_BACKEND_OPTIONS}
        given["script"] = mock_script
        chosen = {} if completions else backend_options(backend, **given)
        config = CodeConfig(
            backend="file" if completions else backend, model=str(completions.name) if completions else (model or ""),
            problems=problems, limit=limit, samples=samples,
            temperatures=() if completions else parse_temperatures(temperature), max_tokens=max_tokens, raw=raw,
            seed=seed, filters=filters_from(top_k, top_p, min_p, filter_order),
            backend_options=tuple(sorted(chosen.items())),
            completions=str(completions.resolve()) if completions else None,
            with_profile=str(with_profile) if with_profile else None,
            limits=Limits(wall_s=exec_timeout, cpu_s=max(1, int(round(exec_timeout)))), sandbox=sandbox,
            allow_weak_sandbox=allow_weak_sandbox).validate()
        path = None
    engine = None if config.completions else registry.create(config.backend, config.model or None,
                                                             **dict(config.backend_options))
    try:
        if path is None:
            if engine is not None:
                config = replace(config, model=engine.model)
            config, path = open_run(out_dir or default_dir("code", config.model or config.backend), config, engine)
        try:
            summary = run_code(config, engine, path, workers=workers, on_record=_progress(json_out))
        except KeyboardInterrupt:
            raise interrupted("code", path) from None
    finally:
        if engine is not None:
            engine.close()
    if json_out:
        print(dumps(summary))
    else:
        render_code(summary, console=out, where=str(path))


def _progress(quiet: bool):
    """A one-line count on stderr, when it is a terminal."""
    if quiet or not err.is_terminal:
        return None
    state = {"n": 0, "passed": 0}

    def on_record(record: dict) -> None:
        state["n"] += 1
        state["passed"] += bool(record["passed"])
        err.print(f"\rscored {state['n']} samples, {state['passed']} passed", end="", highlight=False)

    return on_record
