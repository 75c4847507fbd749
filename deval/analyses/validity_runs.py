"""Calibration and diversity runs: configs, the exact model check, and their run files (written as records arrive,
so an interrupted run resumes where it stopped)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from deval.analyses import calibration
from deval.analyses import diversity
from deval.core.sampling import Filters
from deval.analyses.calibration import Rule
from deval.errors import ConfigError
from deval.core.exact import ExactModel, TaskSession, Vocab
from deval.runs.store import MANIFEST, SUMMARY, RecordLog, create_run_dir, dump_json, read_json
from deval.core.validsets import ValidSetTask, valid_set_from_dict

NODES = "nodes.jsonl"  # calibration: one record per trie node
SAMPLES = "samples.jsonl"  # calibration and diversity: one record per sampled answer
EXACT = "exact.jsonl"  # diversity: one record per model, its exact member probabilities
CALIBRATION_MANIFEST = "deval.calibration-manifest/1"
DIVERSITY_MANIFEST = "deval.diversity-manifest/1"
EXACT_METHODS = ("prompt_tokens", "tokenize", "token_bytes", "next_logprobs")


def _not_exact(backend: str) -> ConfigError:
    return ConfigError(f"the {backend} backend gives no exact next-token distributions over its vocabulary; "
                       f"calibration and diversity need --backend local")


def require_exact_class(cls: type, backend: str) -> None:
    """Refuse a backend class without the exact methods before it is built (and asks for keys or files)."""
    if not all(hasattr(cls, m) for m in EXACT_METHODS):
        raise _not_exact(backend)


def require_exact(engine, backend: str) -> ExactModel:
    """The backend itself, if it gives exact full next-token distributions; a clear error otherwise."""
    if not all(hasattr(engine, m) for m in EXACT_METHODS) or not hasattr(engine, "n_vocab"):
        raise _not_exact(backend)
    return engine


def load_manifest(path: Path, schema: str, command: str) -> dict:
    """The manifest of a run to resume, checked to be one of `command`'s."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"run directory {path} not found; pass the --out directory of an earlier 'deval {command}'")
    m = read_json(path / MANIFEST)
    if m.get("schema") != schema:
        raise ConfigError(f"{path} is not a '{command}' run directory (manifest schema {m.get('schema')}); "
                          f"resume it with the command that wrote it")
    return m


@dataclass(frozen=True)
class CalibrationConfig:
    tasks: tuple[ValidSetTask, ...]
    rules: tuple[Rule, ...]
    samples: int = 50
    temperature: float = 1.0
    seed: int = 0
    filter_order: str = "filters-first"
    backend: str = "local"
    model: str = ""  # the model file the run used (resolved), so a resume opens the same one
    backend_options: tuple[tuple[str, object], ...] = ()

    def to_dict(self) -> dict:
        return {"tasks": [t.to_dict() for t in self.tasks], "rules": [r.to_dict() for r in self.rules],
                "samples": self.samples, "temperature": self.temperature, "seed": self.seed,
                "filter_order": self.filter_order, "backend": self.backend, "model": self.model,
                "backend_options": dict(self.backend_options)}

    @classmethod
    def from_dict(cls, d: dict) -> "CalibrationConfig":
        return cls(tasks=tuple(valid_set_from_dict(t, t.get("source") or "manifest") for t in d["tasks"]),
                   rules=tuple(Rule.from_dict(r) for r in d["rules"]), samples=int(d["samples"]),
                   temperature=float(d["temperature"]), seed=int(d["seed"]), filter_order=d["filter_order"],
                   backend=d.get("backend", "local"), model=d.get("model", ""),
                   backend_options=tuple(d.get("backend_options", {}).items()))


def calibration_manifest(config: CalibrationConfig, backend: dict) -> dict:
    return {"schema": CALIBRATION_MANIFEST, "config": config.to_dict(), "backend": backend}


def load_calibration_config(path: Path) -> CalibrationConfig:
    return CalibrationConfig.from_dict(load_manifest(path, CALIBRATION_MANIFEST, "calibration")["config"])


def run_calibration(config: CalibrationConfig, model: ExactModel, path: Path, backend: dict,
                    on_record: Callable[[], None] = lambda: None) -> dict:
    """Calibrate every task into `path`, finishing what it lacks; node and sample records are appended as they
    arrive (nodes.jsonl, samples.jsonl), then summary.json is written."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        create_run_dir(path, calibration_manifest(config, backend))
    node_log, sample_log = RecordLog(path / NODES), RecordLog(path / SAMPLES)
    done_nodes, done_samples = node_log.read(), sample_log.read()
    rules = list(config.rules)
    vocab = Vocab(model)
    tasks = {}
    try:
        for task in config.tasks:
            session = TaskSession.open(task, model, vocab)
            nodes = [r for r in done_nodes if r["task"] == task.name]
            for r in calibration.node_records(session, rules, config.temperature,
                                              skip=frozenset(tuple(r["tokens"]) for r in nodes)):
                node_log.append(r)
                nodes.append(r)
                on_record()
            labels = {r.label for r in rules}
            drawn = [r for r in done_samples if r["task"] == task.name and r["rule"] in labels
                     and r["index"] < config.samples]
            for r in calibration.sample_records(session, rules, config.samples, config.temperature, config.seed,
                                                skip=frozenset((r["rule"], r["index"]) for r in drawn)):
                sample_log.append(r)
                drawn.append(r)
                on_record()
            tasks[task.name] = calibration.summarise(task, nodes, drawn, rules)
    finally:
        node_log.close()
        sample_log.close()
    summary = {"schema": calibration.SCHEMA, "backend": backend.get("name"), "model": backend.get("model"),
               "temperature": config.temperature, "samples": config.samples, "seed": config.seed,
               "filter_order": config.filter_order, "rules": [r.to_dict() for r in config.rules], "tasks": tasks}
    dump_json(path / SUMMARY, summary)
    return summary


@dataclass(frozen=True)
class DiversityConfig:
    task: ValidSetTask
    samples: int = 100
    temperature: float = 1.0
    filters: Filters = field(default_factory=Filters)
    seed: int = 0
    backend: str = "local"
    models: tuple[tuple[str, str], ...] = ()  # (label, model file) per model on the chart, so a resume reopens them
    backend_options: tuple[tuple[str, object], ...] = ()

    @property
    def rule(self) -> Rule:
        f = self.filters
        parts = [f"{k}={v}" for k, v in (("top_k", f.top_k), ("top_p", f.top_p), ("min_p", f.min_p)) if v is not None]
        return Rule(", ".join(parts) + f" ({f.order})" if parts else "none", f)

    def to_dict(self) -> dict:
        return {"task": self.task.to_dict(), "samples": self.samples, "temperature": self.temperature,
                "filters": self.filters.to_dict(), "seed": self.seed, "backend": self.backend,
                "models": [list(m) for m in self.models], "backend_options": dict(self.backend_options)}

    @classmethod
    def from_dict(cls, d: dict) -> "DiversityConfig":
        return cls(task=valid_set_from_dict(d["task"], d["task"].get("source") or "manifest"),
                   samples=int(d["samples"]), temperature=float(d["temperature"]), filters=Filters(**d["filters"]),
                   seed=int(d["seed"]), backend=d.get("backend", "local"),
                   models=tuple((str(label), str(model)) for label, model in d.get("models", ())),
                   backend_options=tuple(d.get("backend_options", {}).items()))


def diversity_manifest(config: DiversityConfig, backends: dict) -> dict:
    return {"schema": DIVERSITY_MANIFEST, "config": config.to_dict(), "backends": backends}


def load_diversity_config(path: Path) -> DiversityConfig:
    return DiversityConfig.from_dict(load_manifest(path, DIVERSITY_MANIFEST, "diversity")["config"])


def run_diversity(config: DiversityConfig, models: dict[str, ExactModel], path: Path, backends: dict,
                  on_record: Callable[[], None] = lambda: None) -> dict:
    """Distinct-valid curves for each model (sample i shares its generator across models) into `path`, finishing
    what it lacks; sample and exact records are appended as they arrive, then summary.json is written."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        create_run_dir(path, diversity_manifest(config, backends))
    sample_log, exact_log = RecordLog(path / SAMPLES), RecordLog(path / EXACT)
    done_samples, done_exact = sample_log.read(), exact_log.read()
    rule = config.rule
    out = {}
    try:
        for label, model in models.items():
            session = TaskSession.open(config.task, model)
            drawn = [r for r in done_samples if r["model"] == label and r["index"] < config.samples]
            for r in diversity.sample_records(session, rule, config.samples, config.temperature, config.seed, label,
                                              skip=frozenset(r["index"] for r in drawn)):
                sample_log.append(r)
                drawn.append(r)
                on_record()
            exact = next((r for r in done_exact if r["model"] == label), None)
            if exact is None:
                exact = diversity.exact_record(session, rule, config.temperature, label)
                exact_log.append(exact)
            on_record()
            out[label] = diversity.summarise(config.task, drawn, exact)
    finally:
        sample_log.close()
        exact_log.close()
    summary = {"schema": diversity.SCHEMA, "task": config.task.name, "members": len(config.task.members),
               "samples": config.samples, "temperature": config.temperature, "seed": config.seed,
               "rule": rule.to_dict(), "models": out}
    dump_json(path / SUMMARY, summary)
    return summary
