"""`deval layers`: the logit lens over a local GGUF model (the profile protocol, read layer by layer)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from deval.cli.common import (DEFAULT_TASKS, BACKEND_OPTIONS, CtxOpt, FilterOrderOpt, GpuLayersOpt, JsonOpt,
                              MinPOpt, ModeOpt, OutOpt, RawPromptOpt, ResumeOpt, RunsOpt, SeedOpt, StepsOpt,
                              TaskOpt, TasksDirOpt, ThreadsOpt, TopKOpt, TopPOpt, default_dir, err, interrupted, out,
                              profile_config)
from deval.jsonio import dumps


def layers_command(
    model: Optional[str] = typer.Option(None, help="A GGUF path (default: the embedded SmolLM2-135M)."),
    task: TaskOpt = DEFAULT_TASKS,
    tasks_dir: TasksDirOpt = [],
    runs: RunsOpt = 10,
    steps: StepsOpt = None,
    temperature: float = typer.Option(1.0, help="Sampling temperature (> 0), applied at every layer."),
    seed: SeedOpt = 0,
    mode: ModeOpt = None,
    top_k: TopKOpt = None,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    filter_order: FilterOrderOpt = "filters-first",
    out_dir: OutOpt = None,
    resume: ResumeOpt = None,
    json_out: JsonOpt = False,
    gpu_layers: GpuLayersOpt = None,
    threads: ThreadsOpt = None,
    ctx: CtxOpt = None,
    raw_prompt: RawPromptOpt = False,
) -> None:
    """Logit lens on a local GGUF model: on-set mass, e-score, ATVD, ... at every layer."""
    from deval.analyses import layers as analysis  # numpy: not at start-up
    from deval.report.layers import render_layers

    if resume is not None:
        config, _ = analysis.load(resume)
        path = Path(resume)
    else:
        options = {**{k: None for k in BACKEND_OPTIONS}, **locals(), "backend": "local"}
        config = profile_config(options, temperature)
        path = None
    engine = analysis.open_lens(config)
    try:
        if path is None:
            config = replace(config, model=engine.model)
            path = analysis.create(out_dir or default_dir("layers", engine.model), config, engine)
        try:
            summary = _run(config, engine, path, quiet=json_out)
        except KeyboardInterrupt:
            raise interrupted("layers", path) from None
    finally:
        engine.close()
    if json_out:
        print(dumps(summary))
    else:
        render_layers(summary, console=out, where=str(path))


def _run(config, engine, path: Path, quiet: bool) -> dict:
    from deval.analyses import layers as analysis

    if quiet or not err.is_terminal:
        return analysis.run_layers(config, engine, path)
    total = sum((config.steps or t.steps) * config.runs for t in config.tasks)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task(f"lens on {Path(engine.model).name}", total=total)
        return analysis.run_layers(config, engine, path, on_step=lambda step: progress.advance(bar))
