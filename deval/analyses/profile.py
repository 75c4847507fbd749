"""Profiling: turn a config into runs, stream the backend's steps into the run directory, summarise."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from deval.jsonio import dump_json, read_json
from deval.version import __version__
from deval.core.protocol import Backend, Filters, RunSpec, Step, run_seed
from deval.backends.urls import redact
from deval.analyses.result import MANIFEST_COMMANDS, Result, command_for  # noqa: F401  (command_for: public here)
from deval.errors import ConfigError, DevalError, RunInterrupted
from deval.runs.store import MANIFEST, RunDir, default_run_dir, parse_config, stopped
from deval.core.summary import MIN_POSITION_MASS, StepCollector, summarise_task, verdict
from deval.core.tasks import Task, task_from_dict

SCHEMA = "deval.profile/1"
MANIFEST_SCHEMA = "deval.manifest/1"
COMMANDS = MANIFEST_COMMANDS


@dataclass(frozen=True)
class ProfileConfig:
    """Everything that determines a profile run; stored in the manifest so a run can resume or re-render."""

    backend: str
    model: str
    tasks: tuple[Task, ...]
    runs: int = 10
    steps: int | None = None  # None: each task's own step count
    temperature: float = 1.0
    seed: int = 0
    mode: str | None = None  # None: each task's own mode
    filters: Filters = field(default_factory=Filters)
    backend_options: tuple[tuple[str, object], ...] = ()
    derive_temperatures: tuple[float, ...] = ()  # set by deval.analyses.sweep on its T=1 run: see Step.trie_logprobs
    positions: str = "free"  # free | constrained (docs/protocol.md)
    min_mass: float = MIN_POSITION_MASS  # free mode: positions below this on-set mass are format failures

    def run_specs(self, task: Task) -> list[RunSpec]:
        mode = self.mode or task.mode
        steps = self.steps or task.steps
        return [RunSpec(task=task, run=r, seed=run_seed(self.seed, task.name, r), mode=mode, steps=steps,
                        temperature=self.temperature, filters=self.filters,
                        derive_temperatures=self.derive_temperatures, positions=self.positions)
                for r in range(self.runs)]

    def to_dict(self) -> dict:
        d = {
            "backend": self.backend, "model": self.model, "tasks": [t.to_dict() for t in self.tasks],
            "runs": self.runs, "steps": self.steps, "temperature": self.temperature, "seed": self.seed,
            "mode": self.mode, "filters": self.filters.to_dict(), "backend_options": self._stored_options(),
            "positions": self.positions, "min_mass": self.min_mass,
        }
        if self.derive_temperatures:  # written only when set, so plain profile manifests are unchanged
            d["derive_temperatures"] = list(self.derive_temperatures)
        return d

    def _stored_options(self) -> dict:
        """backend_options as written to disk: a base URL without its secrets (a resume asks for it again)."""
        return {k: redact(v) if k == "base_url" and isinstance(v, str) else v for k, v in self.backend_options}

    @classmethod
    def from_dict(cls, d: dict) -> "ProfileConfig":
        return cls(backend=d["backend"], model=d["model"],
                   tasks=tuple(task_from_dict({k: v for k, v in t.items() if k != "source"}, t.get("source", ""))
                               for t in d["tasks"]),
                   runs=d["runs"], steps=d["steps"], temperature=d["temperature"], seed=d["seed"], mode=d["mode"],
                   filters=Filters(**d["filters"]), backend_options=tuple(d.get("backend_options", {}).items()),
                   derive_temperatures=tuple(float(t) for t in d.get("derive_temperatures", ())),
                   positions=d.get("positions", "free"), min_mass=d.get("min_mass", MIN_POSITION_MASS))


def manifest(config: ProfileConfig, backend: Backend) -> dict:
    return {
        "schema": MANIFEST_SCHEMA,
        "config": config.to_dict(),
        "backend": backend.describe(),
        "versions": {"deval": __version__, "python": platform.python_version(), "numpy": np.__version__},
        "filter_order": config.filters.order,
    }


def counting(progress: Callable[[int, int], None] | None, done: Callable[[], int], total: int) -> Callable:
    """A step callback that moves `progress` (done, total) on by one per call, starting from done() (a resumed run
    starts part-way); a no-op without progress."""
    if progress is None:
        return lambda *_: None
    count = [min(done(), total)]
    progress(count[0], total)

    def on_step(*_) -> None:
        count[0] += 1
        progress(min(count[0], total), total)

    return on_step


def run_profile(config: ProfileConfig, backend: Backend, run_dir: RunDir,
                on_step: Callable[[Step], None] = lambda step: None) -> dict:
    """Measure every run not yet in run_dir, appending steps as they arrive, then write the summary."""
    done = run_dir.completed_runs()
    pending = [spec for task in config.tasks for spec in config.run_specs(task) if (task.name, spec.run) not in done]
    before = _stats(backend)
    try:
        if pending:
            for step in backend.measure(pending):
                run_dir.append(step)
                on_step(step)
    finally:
        run_dir.close()
        _record_transport(run_dir, before, _stats(backend))
    summary = summarise(config, run_dir.iter_completed_steps())  # streamed: no run is held in memory
    # HTTP: how P_token was read, exact or bounded, as the run's manifest recorded it (a resume gives the same)
    route = (read_json(run_dir.path / MANIFEST).get("backend") or {}).get("route")
    if route:
        summary["route"] = route
    run_dir.write_summary(summary)
    return summary


TRANSPORT = "transport.json"  # per session: requests, retries by reason, timeouts, concurrency (HTTP backends)
COUNTED = ("requests", "cache_hits", "retries", "timeouts")


def _stats(backend: Backend) -> dict | None:
    stats = getattr(backend, "stats", None)
    return stats() if callable(stats) else None


def _record_transport(run_dir: RunDir, before: dict | None, after: dict | None) -> None:
    """Append this session's transport counts (after minus before: a sweep shares one backend) to transport.json."""
    if after is None:
        return
    session = dict(after)
    for key in COUNTED:
        session[key] = after.get(key, 0) - (before or {}).get(key, 0)
    earlier = (before or {}).get("retry_reasons", {})
    reasons = {k: v - earlier.get(k, 0) for k, v in after.get("retry_reasons", {}).items()}
    session["retry_reasons"] = {k: v for k, v in reasons.items() if v}
    path = run_dir.path / TRANSPORT
    old = read_json(path) if path.exists() else {"sessions": []}
    dump_json(path, {"sessions": list(old.get("sessions", [])) + [session]})


def summarise(config: ProfileConfig, steps: Iterable[Step]) -> dict:
    """The profile's summary from its steps, which may stream past: each task keeps only a StepCollector."""
    by_task = {t.name: StepCollector(t) for t in config.tasks}
    for s in steps:
        if s.task in by_task:
            by_task[s.task].add(s)
    tasks = {t.name: summarise_task(t, by_task[t.name], config.seed, config.min_mass, config.positions)
             for t in config.tasks if len(by_task[t.name])}
    return {
        "schema": SCHEMA, "backend": config.backend, "model": config.model, "temperature": config.temperature,
        "runs": config.runs, "seed": config.seed, "mode": config.mode, "filters": config.filters.to_dict(),
        "positions": config.positions, "min_mass": config.min_mass,
        "tasks": tasks, "verdict": verdict(tasks, config.temperature),
    }


Progress = Callable[[int, int], None]  # (records done, records in all): called at the start and after each record


def load_config(path: Path) -> ProfileConfig:
    """The config stored in a profile run directory (to resume it); a one-line error for another kind of run."""
    stored = RunDir.open(path).manifest()
    if stored.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(f"{path} is not a profile run ({stored.get('schema')}); resume it with "
                          f"deval {command_for(stored)} --resume {path}")
    return parse_config(path, ProfileConfig.from_dict, stored["config"])


def execute(config: ProfileConfig, out: Path | None = None, resume: Path | None = None,
            progress: Progress | None = None) -> Result:
    """Open the backend, create (or, with `resume`, reopen) the run directory, measure, close: the whole profile.

    With `resume`, `config` is the run's stored one (load_config). Ctrl-C raises RunInterrupted(path)."""
    from deval import backends as registry

    engine = registry.create(config.backend, config.model or None, **dict(config.backend_options))
    try:
        if resume is not None:
            run_dir = RunDir.open(resume)
        else:
            config = dataclasses_replace(config, model=engine.model)
            run_dir = RunDir.create(out or default_run_dir("", engine.model or config.backend),
                                    manifest(config, engine))
        total = sum((config.steps or t.steps) * config.runs for t in config.tasks)
        if hasattr(progress, "engine"):  # the CLI's bar shows the backend's retries live
            progress.engine = engine
        on_step = counting(progress, lambda: sum(1 for _ in run_dir.completed_records()), total)
        try:
            summary = run_profile(config, engine, run_dir, on_step=on_step)
        except KeyboardInterrupt:
            raise RunInterrupted(run_dir.path) from None
        except DevalError as exc:
            raise stopped("profile", run_dir.path, exc) from None
    finally:
        engine.close()
    return Result(summary, run_dir.path)
