"""Calibration and diversity runs: configs, the exact model check, and their run files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deval import calibration, diversity
from deval.backend import Filters
from deval.calibration import Rule
from deval.errors import ConfigError
from deval.exact import ExactModel, Vocab
from deval.store import MANIFEST, SUMMARY, dump_json
from deval.validsets import ValidSetTask

NODES = "nodes.jsonl"
EXACT_METHODS = ("prompt_tokens", "tokenize", "token_bytes", "next_logprobs")


def require_exact(engine, backend: str) -> ExactModel:
    """The backend itself, if it gives exact full next-token distributions; a clear error otherwise."""
    if not all(hasattr(engine, m) for m in EXACT_METHODS) or not hasattr(engine, "n_vocab"):
        raise ConfigError(f"the {backend} backend gives no exact next-token distributions over its vocabulary; "
                          f"calibration and diversity need --backend local")
    return engine


def _create_dir(path: Path, manifest: dict) -> Path:
    path = Path(path)
    if (path / MANIFEST).exists():
        raise ConfigError(f"{path} already holds a run; choose a new --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {path} ({exc.strerror}); choose another --out") from None
    dump_json(path / MANIFEST, manifest)
    return path


@dataclass(frozen=True)
class CalibrationConfig:
    tasks: tuple[ValidSetTask, ...]
    rules: tuple[Rule, ...]
    samples: int = 50
    temperature: float = 1.0
    seed: int = 0
    filter_order: str = "filters-first"

    def to_dict(self) -> dict:
        return {"tasks": [t.to_dict() for t in self.tasks], "rules": [r.to_dict() for r in self.rules],
                "samples": self.samples, "temperature": self.temperature, "seed": self.seed,
                "filter_order": self.filter_order}


def run_calibration(config: CalibrationConfig, model: ExactModel, path: Path, backend: dict) -> dict:
    """Calibrate every task; writes manifest.json, nodes.jsonl (one record per trie node) and summary.json."""
    path = _create_dir(path, {"schema": "deval.calibration-manifest/1", "config": config.to_dict(),
                              "backend": backend})
    vocab = Vocab(model)
    tasks = {}
    with (path / NODES).open("w", encoding="utf-8") as fh:
        for task in config.tasks:
            rng = np.random.default_rng([config.seed, len(tasks)])
            summary, records = calibration.calibrate(task, model, list(config.rules), config.samples,
                                                     config.temperature, rng, vocab)
            for r in records:
                fh.write(json.dumps(r) + "\n")
            tasks[task.name] = summary
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

    @property
    def rule(self) -> Rule:
        f = self.filters
        parts = [f"{k}={v}" for k, v in (("top_k", f.top_k), ("top_p", f.top_p), ("min_p", f.min_p)) if v is not None]
        return Rule(", ".join(parts) + f" ({f.order})" if parts else "none", f)

    def to_dict(self) -> dict:
        return {"task": self.task.to_dict(), "samples": self.samples, "temperature": self.temperature,
                "filters": self.filters.to_dict(), "seed": self.seed}


def run_diversity(config: DiversityConfig, models: dict[str, ExactModel], path: Path, backends: dict) -> dict:
    """Distinct-valid curves for each model (same seed for each); writes manifest.json and summary.json."""
    path = _create_dir(path, {"schema": "deval.diversity-manifest/1", "config": config.to_dict(),
                              "backends": backends})
    out = {}
    for label, model in models.items():
        out[label] = diversity.diversity(config.task, model, config.rule, config.samples, config.temperature,
                                         np.random.default_rng(config.seed))
    summary = {"schema": diversity.SCHEMA, "task": config.task.name, "members": len(config.task.members),
               "samples": config.samples, "temperature": config.temperature, "seed": config.seed,
               "rule": config.rule.to_dict(), "models": out}
    dump_json(path / SUMMARY, summary)
    return summary
