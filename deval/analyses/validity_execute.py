"""Calibration and diversity from config to finished run: open exact backends, create or reopen the run directory,
run, close (the one implementation the CLI and the Python API call)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from deval.analyses.result import Result
from deval.analyses.validity_runs import (CalibrationConfig, DiversityConfig, calibration_manifest,
                                          diversity_manifest, require_exact, require_exact_class, run_calibration,
                                          run_diversity)
from deval.errors import ConfigError, RunInterrupted
from deval.runs.store import RecordLog, create_run_dir, default_run_dir

Progress = Callable[[int, int], None]  # (records done, records in all)


def exact_backend(backend: str, model: str | None, options: dict):
    """A backend with exact next-token distributions, or a one-line error before it asks for keys or files."""
    from deval import backends as registry

    require_exact_class(registry.backend_class(backend), backend)
    engine = registry.create(backend, model, **options)
    try:
        return require_exact(engine, backend)
    except ConfigError:
        engine.close()
        raise


def _counter(progress: Progress | None, done: int, total: int) -> Callable[[], None]:
    if progress is None:
        return lambda: None
    state = [min(done, total)]
    progress(state[0], total)

    def tick() -> None:
        state[0] += 1
        progress(min(state[0], total), total)

    return tick


def execute_calibration(config: CalibrationConfig, out: Path | None = None, resume: Path | None = None,
                        progress: Progress | None = None) -> Result:
    """The whole calibration run; with `resume`, `config` is the stored one (load_calibration_config)."""
    from deval.analyses.calibration import trie_nodes
    from deval.analyses.validity_runs import NODES, SAMPLES

    engine = exact_backend(config.backend, config.model or None, dict(config.backend_options))
    try:
        if resume is None:
            config = replace(config, model=engine.model)
            path = create_run_dir(out or default_run_dir("calibration", engine.model),
                                  calibration_manifest(config, engine.describe()))
        else:
            path = Path(resume)
        total = sum(len(trie_nodes(t, engine)) for t in config.tasks) + \
            len(config.tasks) * len(config.rules) * config.samples
        done = len(RecordLog(path / NODES).read(repair=False)) + len(RecordLog(path / SAMPLES).read(repair=False))
        try:
            summary = run_calibration(config, engine, path, engine.describe(), on_record=_counter(progress, done, total))
        except KeyboardInterrupt:
            raise RunInterrupted(path) from None
    finally:
        engine.close()
    return Result(summary, path)


def execute_diversity(config: DiversityConfig, models: list[str | None] = (None,), out: Path | None = None,
                      resume: Path | None = None, progress: Progress | None = None) -> Result:
    """The whole diversity run over `models` (model refs; None: the backend's default); with `resume`, `config` is
    the stored one (load_diversity_config) and its own models are reopened."""
    from deval.analyses.validity_runs import EXACT, SAMPLES

    refs = list(config.models) if resume is not None else [(None, ref) for ref in models]
    engines = {}
    try:
        for label, ref in refs:
            engine = exact_backend(config.backend, ref or None, dict(config.backend_options))
            if label is None:
                label = Path(engine.model).stem if engine.model else (ref or config.backend)
                while label in engines:
                    label += "'"
            engines[label] = engine
        describe = {k: e.describe() for k, e in engines.items()}
        if resume is None:
            config = replace(config, models=tuple((label, e.model) for label, e in engines.items()))
            path = create_run_dir(out or default_run_dir("diversity", next(iter(engines.values())).model),
                                  diversity_manifest(config, describe))
        else:
            path = Path(resume)
        total = len(engines) * (config.samples + 1)
        done = len(RecordLog(path / SAMPLES).read(repair=False)) + len(RecordLog(path / EXACT).read(repair=False))
        try:
            summary = run_diversity(config, engines, path, describe, on_record=_counter(progress, done, total))
        except KeyboardInterrupt:
            raise RunInterrupted(path) from None
    finally:
        for engine in engines.values():
            engine.close()
    return Result(summary, path)
