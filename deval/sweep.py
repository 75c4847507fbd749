"""Temperature sweeps: one profile per temperature, plus P_token re-tempered exactly along the T=1 trajectory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from scipy.special import logsumexp

from deval import metrics
from deval.backend import Backend, Step
from deval.errors import ConfigError
from deval.profile import ProfileConfig, manifest, run_profile
from deval.store import MANIFEST, SUMMARY, RunDir, dump_json, read_json
from deval.summary import TaskArrays, bootstrap_stat

SCHEMA = "deval.sweep/1"
MANIFEST_SCHEMA = "deval.sweep-manifest/1"
DEFAULT_TEMPERATURES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # the paper sweeps 0.5 to 2.0
# Our reconstruction: a model "barely responds" when its mean e-score moves less than this across the sweep.
RESPONSE_THRESHOLD = 0.1
MEASURED_KEYS = ("e_score", "atvd", "result_tvd", "on_set_mass", "entropy", "kept_coverage")
DERIVED_KEYS = ("e_score", "atvd", "entropy")


@dataclass(frozen=True)
class SweepConfig:
    """A profile config (its temperature unused) and the temperatures to profile it at."""

    base: ProfileConfig
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES

    def at(self, temperature: float) -> ProfileConfig:
        return dataclasses.replace(self.base, temperature=float(temperature))

    def to_dict(self) -> dict:
        return {"base": self.base.to_dict(), "temperatures": list(self.temperatures)}

    @classmethod
    def from_dict(cls, d: dict) -> "SweepConfig":
        return cls(base=ProfileConfig.from_dict(d["base"]), temperatures=tuple(float(t) for t in d["temperatures"]))


def parse_temperatures(text: str) -> tuple[float, ...]:
    """'0.5,1,2' -> (0.5, 1.0, 2.0), sorted and distinct; every value > 0."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--temperatures must be numbers separated by commas, such as 0.5,1,2 (got '{text}')") from None
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        raise ConfigError(f"--temperatures must be one or more numbers > 0, such as 0.5,1,2 (got '{text}')")
    return tuple(sorted(set(values)))


def temperature_dir(temperature: float) -> str:
    return f"T{temperature:g}"


def sweep_manifest(config: SweepConfig, backend: Backend) -> dict:
    return {"schema": MANIFEST_SCHEMA, "config": config.to_dict(), "backend": backend.describe(),
            "runs": {f"{t:g}": temperature_dir(t) for t in config.temperatures}}


def create_sweep_dir(path: Path, config: SweepConfig, backend: Backend) -> Path:
    path = Path(path)
    if (path / MANIFEST).exists():
        raise ConfigError(f"{path} already holds a run; pass --resume {path} to finish it, or choose a new --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create run directory {path} ({exc.strerror}); choose another --out") from None
    dump_json(path / MANIFEST, sweep_manifest(config, backend))
    return path


def load_sweep_config(path: Path) -> SweepConfig:
    m = read_json(Path(path) / MANIFEST)
    if m.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(f"{path} is not a sweep run directory (manifest schema {m.get('schema')}); "
                          f"use 'deval profile --resume' for profile runs")
    return SweepConfig.from_dict(m["config"])


def run_sweep(config: SweepConfig, backend: Backend, path: Path,
              on_step: Callable[[float, Step], None] = lambda t, step: None) -> dict:
    """Profile every temperature into its own run directory under `path` (resuming any started), then summarise."""
    path = Path(path)
    if not (path / MANIFEST).exists():
        create_sweep_dir(path, config, backend)
    per_temperature: dict[float, tuple[dict, list[Step]]] = {}
    for t in config.temperatures:
        sub = path / temperature_dir(t)
        cfg = config.at(t)
        run_dir = RunDir.open(sub) if (sub / MANIFEST).exists() else RunDir.create(sub, manifest(cfg, backend))
        summary = run_profile(cfg, backend, run_dir, on_step=lambda step, t=t: on_step(t, step))
        per_temperature[t] = (summary, run_dir.completed_steps())
    summary = summarise_sweep(config, per_temperature)
    dump_json(path / SUMMARY, summary)
    return summary


def derived_p_token(item_logprobs: list, temperature: float) -> np.ndarray:
    """P_token at temperature T from T=1 item-token log-probabilities: softmax over items of logsumexp(lp / T)."""
    weights = np.array([logsumexp(np.asarray(lp, dtype=float) / temperature) if len(lp) else -np.inf
                        for lp in item_logprobs])
    if not np.isfinite(weights).any():
        return np.full(len(weights), np.nan)
    return np.exp(weights - logsumexp(weights))


def derive_task(task, steps: list[Step], temperatures: tuple[float, ...], seed: int) -> dict[float, dict] | None:
    """e-score, ATVD and entropy at each temperature along the recorded T=1 trajectory; None if not derivable."""
    if not steps or any(s.item_logprobs is None for s in steps):
        return None
    arrays = TaskArrays.from_steps(task, steps)
    runs = sorted({s.run for s in steps})
    index = {r: i for i, r in enumerate(runs)}
    out = {}
    for t in temperatures:
        ptok = np.full(arrays.probs.shape, np.nan)
        for s in steps:
            ptok[index[s.run], s.step] = derived_p_token(s.item_logprobs, t)
        rng = np.random.default_rng(seed)
        e_t = np.nanmax(np.where(np.isnan(ptok), -np.inf, ptok), axis=-1)
        e_t = np.where(np.isinf(e_t), np.nan, e_t)
        out[t] = {"e_score": bootstrap_stat(metrics.run_means(e_t), rng),
                  "atvd": bootstrap_stat(metrics.run_means(metrics.tv(ptok, task.p_task)), rng),
                  "entropy": bootstrap_stat(metrics.run_means(metrics.entropy(ptok)), rng)}
    return out


def summarise_sweep(config: SweepConfig, per_temperature: dict[float, tuple[dict, list[Step]]]) -> dict:
    temps = tuple(sorted(per_temperature))
    filters = config.base.filters
    derivable_reason = None
    if 1.0 not in per_temperature:
        derivable_reason = "include 1 in --temperatures to derive from the T=1 trajectory"
    elif filters.active:
        derivable_reason = "not derivable with decoding filters (the kept set depends on the whole vocabulary)"
    tasks = {}
    for task in config.base.tasks:
        rows = []
        for t in temps:
            s = per_temperature[t][0]["tasks"].get(task.name)
            if s is None:
                continue
            rows.append({"temperature": t, "measured": {k: s[k] for k in MEASURED_KEYS if k in s},
                         "invalid_rate": s["invalid_rate"], "derived": None})
        if not rows:
            continue
        reason = derivable_reason
        if reason is None:
            t1_steps = [st for st in per_temperature[1.0][1] if st.task == task.name]
            derived = derive_task(task, t1_steps, temps, config.base.seed)
            if derived is None:
                reason = "the backend gave no single-token T=1 item log-probabilities for this task"
            else:
                for row in rows:
                    row["derived"] = derived[row["temperature"]]
        tasks[task.name] = {"rows": rows, "derived_note": reason or "derived exactly from the T=1 trajectory",
                            **response(rows, task)}
    return {
        "schema": SCHEMA, "backend": config.base.backend, "model": config.base.model, "runs": config.base.runs,
        "seed": config.base.seed, "mode": config.base.mode, "filters": filters.to_dict(),
        "temperatures": list(temps),
        "runs_dirs": {f"{t:g}": temperature_dir(t) for t in temps},
        "verdicts": {f"{t:g}": per_temperature[t][0]["verdict"]["type"] for t in temps},
        "tasks": tasks,
    }


def response(rows: list[dict], task) -> dict:
    """The ATVD-minimising temperature (measured and derived) and how far the e-score moves across the sweep."""

    def argmin(key: str) -> float | None:
        vals = [(r[key]["atvd"]["mean"], r["temperature"]) for r in rows
                if r.get(key) and r[key]["atvd"]["mean"] is not None and np.isfinite(r[key]["atvd"]["mean"])]
        return min(vals)[1] if vals else None

    e = [r["measured"]["e_score"]["mean"] for r in rows]
    e_move = float(e[0] - e[-1]) if len(e) > 1 and all(v is not None and np.isfinite(v) for v in e) else None
    if e_move is None:
        text = "needs two temperatures with measured e-scores"
    elif abs(e_move) < RESPONSE_THRESHOLD:
        text = (f"barely responds: the e-score moves {e[0]:.2f} -> {e[-1]:.2f} from T={rows[0]['temperature']:g} "
                f"to T={rows[-1]['temperature']:g} (less than {RESPONSE_THRESHOLD})")
    else:
        text = (f"{'flattens' if e_move > 0 else 'sharpens'} with temperature: the e-score moves {e[0]:.2f} -> "
                f"{e[-1]:.2f} from T={rows[0]['temperature']:g} to T={rows[-1]['temperature']:g} "
                f"(P_task's largest is {float(task.p_task.max()):.2f})")
    return {"best_temperature": argmin("measured"), "best_temperature_derived": argmin("derived"),
            "e_score_move": e_move, "response": text}
