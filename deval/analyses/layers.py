"""`deval layers`: the profile protocol on a local GGUF model, with every layer read through the logit lens.

Each measured position is recorded once (layers.jsonl): the model's own step (as `deval profile` writes it) and
p_t(item) at every layer. The summary holds the model's own profile and, per task and layer, the profile's
metrics computed from that layer's item distributions, plus where the final top item first becomes the top item.
"""

from __future__ import annotations

import platform
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from deval.analyses.profile import ProfileConfig, summarise
from deval.core.protocol import Step
from deval.core.summary import MIN_POSITION_MASS, summarise_task
from deval.core.tasks import Task
from deval.errors import ConfigError
from deval.runs.store import MANIFEST, SUMMARY, RecordLog, create_run_dir, dump_json, read_json
from deval.version import __version__

SCHEMA = "deval.layers/1"
MANIFEST_SCHEMA = "deval.layers-manifest/1"
RECORDS = "layers.jsonl"  # one record per item position: the Step record plus layer_probs and lens_check
LAYER_METRICS = ("on_set_mass", "e_score", "atvd", "volatility", "entropy", "extremity")


def open_lens(config: ProfileConfig):
    """The lens backend for a config (the local backend with its layer capture)."""
    if config.backend != "local":
        raise ConfigError(f"deval layers reads a model's layers in-process; it needs the local backend, "
                          f"not {config.backend}")
    from deval.backends.lens import LensBackend  # llama_cpp and gguf load only when a lens is opened
    return LensBackend(config.model or None, **dict(config.backend_options))


def manifest(config: ProfileConfig, backend) -> dict:
    return {"schema": MANIFEST_SCHEMA, "config": config.to_dict(), "backend": backend.describe(),
            "versions": {"deval": __version__, "python": platform.python_version(), "numpy": np.__version__}}


def create(path: Path, config: ProfileConfig, backend) -> Path:
    return create_run_dir(path, manifest(config, backend))


def load(path: Path) -> tuple[ProfileConfig, dict]:
    """The config and manifest of a layers run directory (for --resume)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"run directory {path} not found; pass the --out directory of an earlier 'deval layers'")
    m = read_json(path / MANIFEST)
    if m.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(f"{path} is not a 'deval layers' run directory (manifest schema {m.get('schema')}); "
                          f"resume it with the command that wrote it")
    return ProfileConfig.from_dict(m["config"]), m


def completed_records(log: RecordLog) -> list[dict]:
    """Records of runs that finished; the log is rewritten without partial runs so a resume redoes them."""
    records = log.read()
    done = {(r["task"], r["run"]) for r in records if r.get("final")}
    kept = [r for r in records if (r["task"], r["run"]) in done]
    if len(kept) != len(records):
        log.rewrite(kept)
    return kept


def run_layers(config: ProfileConfig, backend, path: Path,
               on_step: Callable[[Step], None] = lambda step: None) -> dict:
    """Measure every run not yet in the run directory, appending records as they arrive, then summarise."""
    path = Path(path)
    log = RecordLog(path / RECORDS)
    done = {(r["task"], r["run"]) for r in completed_records(log)}
    pending = [spec for task in config.tasks for spec in config.run_specs(task) if (task.name, spec.run) not in done]
    try:
        for step, layer in backend.measure_layers(pending):
            log.append({**step.to_record(), "layer_probs": [list(p) for p in layer.probs],
                        "lens_check": layer.check})
            on_step(step)
    finally:
        log.close()
    summary = summarise_layers(config, completed_records(log), backend.describe().get("lens", {}))
    dump_json(path / SUMMARY, summary)
    return summary


def summarise_layers(config: ProfileConfig, records: list[dict], lens: dict) -> dict:
    """The model's own profile, and per task and layer the same metrics from the lens's item distributions."""
    steps = [Step.from_record(r) for r in records]
    checks = [float(r["lens_check"]) for r in records]
    tasks = {}
    for task in config.tasks:
        mine = [(s, r) for s, r in zip(steps, records) if s.task == task.name]
        if mine:
            tasks[task.name] = _task_layers(task, mine, config.seed, config.min_mass, config.positions)
    return {"schema": SCHEMA, "backend": config.backend, "model": config.model, "temperature": config.temperature,
            "runs": config.runs, "seed": config.seed, "mode": config.mode, "filters": config.filters.to_dict(),
            "lens": lens, "lens_check_max": max(checks) if checks else None,
            "profile": summarise(config, steps), "tasks": tasks}


def _task_layers(task: Task, pairs: list[tuple[Step, dict]], seed: int, min_mass: float = MIN_POSITION_MASS,
                 positions: str = "free") -> dict:
    layer_probs = np.array([r["layer_probs"] for _, r in pairs], dtype=float)  # [positions, layers, items]
    n_layer = layer_probs.shape[1]
    rows = []
    for layer in range(n_layer):
        at = [replace(s, probs=tuple(layer_probs[i, layer])) for i, (s, _) in enumerate(pairs)]
        full = summarise_task(task, at, seed, min_mass, positions)  # the profile's rule at every layer
        rows.append({"layer": layer + 1, **{k: full[k] for k in LAYER_METRICS}, "mean_p_token": full["mean_p_token"]})
    return {"p_task": {x: w for x, w in zip(task.items, task.weights)}, "layers": rows,
            "top_item": top_item_layers(layer_probs, np.array([s.probs for s, _ in pairs], dtype=float))}


def top_item_layers(layer_probs: np.ndarray, final: np.ndarray) -> dict:
    """Where the final distribution's top item becomes the top item, over positions with item mass.

    `first`: the first layer where it is the top item; `settled`: the first layer from which it stays on top
    through the last layer. Layers count from 1 (the first block's output); positions whose final item mass is 0
    are left out."""
    keep = final.sum(axis=1) > 0
    if not keep.any():
        return {"positions": 0, "first": None, "settled": None}
    top = final[keep].argmax(axis=1)
    is_top = layer_probs[keep].argmax(axis=2) == top[:, None]  # [positions, layers]
    first = is_top.argmax(axis=1) + 1
    n_layer = is_top.shape[1]
    stays = np.flip(np.cumprod(np.flip(is_top, axis=1), axis=1), axis=1).astype(bool)
    settled = n_layer - stays.sum(axis=1) + 1
    found = is_top[:, -1]  # the last layer is the model's own distribution (up to the lens check)

    def stat(x: np.ndarray) -> dict:
        return {"mean": float(np.mean(x)), "median": float(np.median(x))} if len(x) else None

    return {"positions": int(keep.sum()), "first": stat(first[found]), "settled": stat(settled[found])}
