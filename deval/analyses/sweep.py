"""Temperature sweeps: one profile per temperature, plus P_token re-tempered exactly along the T=1 trajectory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from deval.core import metrics
from deval.core.protocol import Backend, Step, TrieLogprobs
from deval.errors import ConfigError
from deval.analyses.profile import Progress, ProfileConfig, counting, manifest, run_profile
from deval.analyses.result import Result
from deval.errors import DevalError, RunInterrupted
from deval.core.sampling import logsumexp
from deval.core.trie import chain_rule
from deval.runs.store import (MANIFEST, SUMMARY, RunDir, create_run_dir, default_run_dir, dump_json, parse_config,
                              read_manifest, stopped)
from deval.core.summary import MIN_POSITION_MASS, TaskArrays, interval_stat

SCHEMA = "deval.sweep/1"
MANIFEST_SCHEMA = "deval.sweep-manifest/1"
DEFAULT_TEMPERATURES = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # the paper sweeps 0.5 to 2.0
# Our reconstruction: a model "barely responds" when its mean e-score moves less than this across the sweep.
RESPONSE_THRESHOLD = 0.1
MEASURED_KEYS = ("e_score", "atvd", "result_tvd", "on_set_mass", "entropy", "kept_coverage")
DERIVED_KEYS = ("e_score", "atvd", "entropy", "on_set_mass")  # on-set mass only from trie records
TEMPERATURE_MATCH = 1e-9
# Our choice: a temperature can be named best (lowest ATVD) only where the model still answers in the format.
MIN_SWEEP_MASS = 0.5  # mean on-set mass
MAX_SWEEP_INVALID = 0.5  # invalid (off-set) sample rate  # a recorded temperature serves a requested one this close to it


@dataclass(frozen=True)
class SweepConfig:
    """A profile config (its temperature unused) and the temperatures to profile it at."""

    base: ProfileConfig
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES

    def at(self, temperature: float) -> ProfileConfig:
        """The profile at one temperature; the T=1 run records what the other temperatures derive from."""
        derive = self.temperatures if temperature == 1.0 and not self.base.filters.active else ()
        return dataclasses.replace(self.base, temperature=float(temperature), derive_temperatures=derive)

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
    values = sorted(set(values))
    dirs = [temperature_dir(v) for v in values]
    if len(set(dirs)) != len(dirs):
        raise ConfigError(f"--temperatures has values too close to tell apart ({text}); use at most 6 significant "
                          f"digits")
    return tuple(values)


def temperature_dir(temperature: float) -> str:
    return f"T{temperature:g}"


def sweep_manifest(config: SweepConfig, backend: Backend) -> dict:
    return {"schema": MANIFEST_SCHEMA, "config": config.to_dict(), "backend": backend.describe(),
            "runs": {f"{t:g}": temperature_dir(t) for t in config.temperatures}}


def create_sweep_dir(path: Path, config: SweepConfig, backend: Backend) -> Path:
    return create_run_dir(path, sweep_manifest(config, backend))


def load_sweep_config(path: Path) -> SweepConfig:
    if not Path(path).is_dir():
        raise ConfigError(f"run directory {path} not found; pass the --out directory of an earlier 'deval sweep'")
    m = read_manifest(path)
    if m.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(f"{path} is not a sweep run directory (manifest schema {m.get('schema')}); "
                          f"use 'deval profile --resume' for profile runs")
    return parse_config(path, SweepConfig.from_dict, m["config"])


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


def execute(config: SweepConfig, out: Path | None = None, resume: Path | None = None,
            progress: Progress | None = None) -> Result:
    """Open the backend, create (or, with `resume`, reopen) the sweep directory, profile every temperature, close.

    With `resume`, `config` is the sweep's stored one (load_sweep_config). Ctrl-C raises RunInterrupted(path)."""
    from deval import backends as registry

    base = config.base
    engine = registry.create(base.backend, base.model or None, **dict(base.backend_options))
    try:
        if resume is not None:
            path = Path(resume)
        else:
            config = dataclasses.replace(config, base=dataclasses.replace(base, model=engine.model))
            path = create_sweep_dir(out or default_run_dir("sweep", engine.model), config, engine)
        total = len(config.temperatures) * sum((base.steps or t.steps) * base.runs for t in base.tasks)
        subs = [path / temperature_dir(t) for t in config.temperatures]
        on_step = counting(progress, lambda: sum(len(RunDir(sub).completed_steps()) for sub in subs
                                                 if (sub / MANIFEST).exists()), total)
        try:
            summary = run_sweep(config, engine, path, on_step=on_step)
        except KeyboardInterrupt:
            raise RunInterrupted(path) from None
        except DevalError as exc:
            raise stopped("sweep", path, exc) from None
    finally:
        engine.close()
    return Result(summary, path)


def derived_p_token(item_logprobs: list, temperature: float) -> np.ndarray:
    """P_token at temperature T from T=1 item-token log-probabilities: softmax over items of logsumexp(lp / T)."""
    weights = np.array([logsumexp(np.asarray(lp, dtype=float) / temperature) if len(lp) else -np.inf
                        for lp in item_logprobs])
    if not np.isfinite(weights).any():
        return np.full(len(weights), np.nan)
    return np.exp(weights - logsumexp(weights))


def trie_item_probs(record: TrieLogprobs, n_items: int, temperature: float) -> np.ndarray | None:
    """p_t(item) at temperature T by the chain rule down the recorded trie; None if T was not recorded.

    At each node a child token's probability is exp(logprob / T - log_z(T)); an item that is also a prefix of
    another ('1' and '10') keeps only the mass that does not go on into the longer item (as the local backend).
    """
    col = next((j for j, t in enumerate(record.temperatures) if abs(t - temperature) <= TEMPERATURE_MATCH), None)
    if col is None:
        return None
    at = {node: (dict(zip(kids, lps)), zs[col]) for node, kids, lps, zs in
          zip(record.nodes, record.children, record.logprobs, record.log_z)}
    children = {node: kids for node, kids in zip(record.nodes, record.children)}
    return chain_rule(children, dict(record.ends),
                      lambda node, tok: float(np.exp(at[node][0][tok] / temperature - at[node][1])), n_items)


def derived_probs(steps: list[Step], n_items: int, temperature: float) -> tuple[list[np.ndarray], bool] | None:
    """Per step, item probabilities at T re-tempered from its T=1 record: (values, absolute) or None.

    absolute is True when every step had a trie record (exact p_t, on-set mass included); otherwise the values are
    P_token from one-token log-probabilities (their on-set mass is unknown). None if some step has neither.
    """
    out, absolute = [], True
    for s in steps:
        probs = trie_item_probs(s.trie_logprobs, n_items, temperature) if s.trie_logprobs is not None else None
        if probs is None:
            if s.item_logprobs is None:
                return None
            probs, absolute = derived_p_token(s.item_logprobs, temperature), False
        out.append(probs)
    return out, absolute


def derive_task(task, steps: list[Step], temperatures: tuple[float, ...], seed: int,
                min_mass: float = MIN_POSITION_MASS, positions: str = "free") -> dict[float, dict] | None:
    """e-score, ATVD, entropy (and on-set mass) at each temperature along the recorded T=1 trajectory; None if not
    derivable at every temperature. Format failures are left out as the measured summary does (free mode: on-set
    mass at T below min_mass; known only where the trie was recorded)."""
    if not steps:
        return None
    arrays = TaskArrays.from_steps(task, steps)
    runs = sorted({s.run for s in steps})
    index = {r: i for i, r in enumerate(runs)}
    out = {}
    for t in temperatures:
        derived = derived_probs(steps, len(task.items), t)
        if derived is None:
            return None
        values, absolute = derived
        probs = np.full(arrays.probs.shape, np.nan)
        for s, v in zip(steps, values):
            probs[index[s.run], s.step] = v
        ptok = metrics.p_token(probs)
        if absolute and positions == "free":
            failed = ~(np.nan_to_num(metrics.on_set_mass(probs), nan=0.0) >= min_mass)
            ptok = np.where(failed[..., None], np.nan, ptok)
        e_t = np.nanmax(np.where(np.isnan(ptok), -np.inf, ptok), axis=-1)
        e_t = np.where(np.isinf(e_t), np.nan, e_t)
        out[t] = {"e_score": interval_stat(metrics.run_means(e_t), seed, "derived_e_score"),
                  "atvd": interval_stat(metrics.run_means(metrics.tv(ptok, task.p_task)), seed, "derived_atvd"),
                  "entropy": interval_stat(metrics.run_means(metrics.entropy(ptok)), seed, "derived_entropy")}
        if absolute:
            out[t]["on_set_mass"] = interval_stat(metrics.run_means(metrics.on_set_mass(probs)), seed,
                                                   "derived_on_set_mass")
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
            derived = derive_task(task, t1_steps, temps, config.base.seed, config.base.min_mass, config.base.positions)
            if derived is None:
                reason = ("the backend recorded no T=1 log-probabilities for this task's item spellings "
                          "(an exact backend records them on the sweep's T=1 run)")
            else:
                for row in rows:
                    row["derived"] = derived[row["temperature"]]
        tasks[task.name] = {"rows": rows, "derived_note": reason or derived_note(rows), **response(rows, task)}
    return {
        "schema": SCHEMA, "backend": config.base.backend, "model": config.base.model, "runs": config.base.runs,
        "seed": config.base.seed, "mode": config.base.mode, "filters": filters.to_dict(),
        "temperatures": list(temps),
        "runs_dirs": {f"{t:g}": temperature_dir(t) for t in temps},
        "verdicts": {f"{t:g}": per_temperature[t][0]["verdict"]["type"] for t in temps},
        "tasks": tasks,
    }


def derived_note(rows: list[dict]) -> str:
    """How the derived numbers were computed, in words for the report."""
    if all("on_set_mass" in (r["derived"] or {}) for r in rows):
        return ("re-tempered exactly from the T=1 run's recorded item trie (chain rule over each node's T=1 "
                "child log-probabilities and its normaliser at T)")
    return "re-tempered exactly from the T=1 run's one-token item log-probabilities (softmax of log p / T)"


def response(rows: list[dict], task) -> dict:
    """The ATVD-minimising temperature (measured and derived) and how far the e-score moves across the sweep."""

    def passes(r: dict, key: str) -> bool:
        mass = (r.get(key) or {}).get("on_set_mass", r["measured"].get("on_set_mass", {})).get("mean")
        return (mass is not None and np.isfinite(mass) and mass >= MIN_SWEEP_MASS
                and np.isfinite(r["invalid_rate"]) and r["invalid_rate"] <= MAX_SWEEP_INVALID)

    def argmin(key: str) -> float | None:
        vals = [(r[key]["atvd"]["mean"], r["temperature"]) for r in rows
                if r.get(key) and r[key]["atvd"]["mean"] is not None and np.isfinite(r[key]["atvd"]["mean"])
                and passes(r, key)]
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
    best = argmin("measured")
    note = None if best is not None else (
        f"no temperature passes the minimum (on-set mass >= {MIN_SWEEP_MASS:g} and invalid rate <= "
        f"{MAX_SWEEP_INVALID:g}), so none is named best")
    return {"best_temperature": best, "best_temperature_derived": argmin("derived") if best is not None else None,
            "best_temperature_note": note, "e_score_move": e_move, "response": text}
