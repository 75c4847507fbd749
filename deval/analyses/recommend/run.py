"""deval recommend runs: the config, the run directory (records appended as they arrive, so --resume finishes an
interrupted run), generation or scoring of a completions file, the P_token view, and the summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from deval.analyses.recommend import metrics
from deval.analyses.recommend import ptoken as first_slot
from deval.analyses.recommend.data import Dataset, load
from deval.analyses.recommend.protocol import Case, draw_users, eligible_cases, prompt, sample_seed
from deval.analyses.recommend.titles import Catalogue, display, require_rapidfuzz
from deval.core.exact import CachedModel
from deval.core.protocol import GenerateSpec
from deval.core.sampling import Filters
from deval.errors import ConfigError
from deval.runs.store import MANIFEST, SUMMARY, RecordLog, create_run_dir, dump_json, read_json

SCHEMA = "deval.recommend/1"
MANIFEST_SCHEMA = "deval.recommend-manifest/1"
SAMPLES, PTOKEN = "samples.jsonl", "ptoken.jsonl"
EXACT_METHODS = ("prompt_tokens", "tokenize", "next_logprobs")
COMPLETIONS = "completions"  # the group label of a scored completions file


@dataclass(frozen=True)
class RecommendConfig:
    data: str
    users: int = 200
    history: int = 10
    k: int = 10
    samples: int = 5
    temperatures: tuple[float, ...] = (1.0,)
    seed: int = 0
    max_tokens: int = 0  # 0: 12 per title asked for, plus 8
    filters: Filters = field(default_factory=Filters)
    backend: str = "local"
    model: str = ""
    backend_options: tuple[tuple[str, object], ...] = ()
    ptoken: bool = True
    ptoken_budget: int = first_slot.BUDGET
    completions: str = ""  # a JSONL file of {"user", "sample", "text"} to score instead of generating
    fingerprint: str = ""  # of the data files, set when the run starts

    @property
    def tokens(self) -> int:
        return self.max_tokens or 12 * self.k + 8

    def to_dict(self) -> dict:
        return {"data": self.data, "users": self.users, "history": self.history, "k": self.k,
                "samples": self.samples, "temperatures": list(self.temperatures), "seed": self.seed,
                "max_tokens": self.max_tokens, "filters": self.filters.to_dict(), "backend": self.backend,
                "model": self.model, "backend_options": dict(self.backend_options), "ptoken": self.ptoken,
                "ptoken_budget": self.ptoken_budget, "completions": self.completions,
                "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: dict) -> "RecommendConfig":
        return cls(data=d["data"], users=int(d["users"]), history=int(d["history"]), k=int(d["k"]),
                   samples=int(d["samples"]), temperatures=tuple(float(t) for t in d["temperatures"]),
                   seed=int(d["seed"]), max_tokens=int(d["max_tokens"]), filters=Filters(**d["filters"]),
                   backend=d["backend"], model=d["model"], backend_options=tuple(d["backend_options"].items()),
                   ptoken=bool(d["ptoken"]), ptoken_budget=int(d["ptoken_budget"]),
                   completions=d.get("completions", ""), fingerprint=d.get("fingerprint", ""))


def load_config(path: Path) -> RecommendConfig:
    """The config of a run to resume, checked to be a recommend run."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"run directory {path} not found; pass the --out directory of an earlier 'deval recommend'")
    m = read_json(path / MANIFEST)
    if m.get("schema") != MANIFEST_SCHEMA:
        raise ConfigError(f"{path} is not a 'recommend' run directory (manifest schema {m.get('schema')}); "
                          f"resume it with the command that wrote it")
    return RecommendConfig.from_dict(m["config"])


def read_completions(path: Path) -> list[dict]:
    """{"user", "sample", "text"} records of a JSONL file; a one-line error naming the line otherwise."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --completions {path} ({exc}); pass a UTF-8 JSONL file") from None
    records, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: line {n}: not JSON ({exc.msg})") from None
        if not isinstance(r, dict) or not {"user", "sample", "text"} <= set(r):
            raise ConfigError(f'{path}: line {n}: expected an object with "user", "sample" and "text"')
        if not isinstance(r["text"], str) or isinstance(r["user"], bool) or not isinstance(r["user"], int) \
                or isinstance(r["sample"], bool) or not isinstance(r["sample"], int):
            raise ConfigError(f'{path}: line {n}: "user" and "sample" must be integers and "text" a string')
        if (r["user"], r["sample"]) in seen:
            raise ConfigError(f"{path}: line {n}: user {r['user']} sample {r['sample']} appears twice")
        seen.add((r["user"], r["sample"]))
        records.append({"line": n, "user": r["user"], "sample": r["sample"], "text": r["text"]})
    if not records:
        raise ConfigError(f"--completions {path} holds no records")
    return records


def choose_cases(config: RecommendConfig, data: Dataset, completions: list[dict] | None) -> list[Case]:
    """The users a run scores: those of the completions file, or a seeded draw of --users."""
    cases = eligible_cases(data, config.history)
    if completions is None:
        return draw_users(cases, config.users, config.seed)
    users = {r["user"]: r["line"] for r in completions}
    for user, line in users.items():
        if user not in cases:
            why = "is not in the ratings" if all(r.user != user for r in data.ratings) else \
                f"has no liked movie after {config.history} liked ones (lower --history)"
            raise ConfigError(f"{config.completions}: line {line}: user {user} {why}")
    return [cases[u] for u in sorted(users)]


def start(config: RecommendConfig, path: Path, backend: dict) -> tuple[RecommendConfig, Path]:
    """A new run directory for `config`, with the data's fingerprint recorded."""
    config = replace(config, fingerprint=load(Path(config.data)).fingerprint)
    return config, create_run_dir(path, {"schema": MANIFEST_SCHEMA, "config": config.to_dict(), "backend": backend})


def run_recommend(config: RecommendConfig, engine, path: Path, backend: dict,
                  on_record: Callable[[], None] | None = None) -> dict:
    """Generate (or read) every missing sample and P_token record into `path`, then write the summary."""
    path = Path(path)
    require_rapidfuzz()  # before any generation
    data = load(Path(config.data))
    if config.fingerprint and data.fingerprint != config.fingerprint:
        raise ConfigError(f"the data in {config.data} changed since this run started; restore it or start a new run")
    completions = read_completions(Path(config.completions)) if config.completions else None
    cases = choose_cases(config, data, completions)
    titles = {m: mv.title for m, mv in data.movies.items()}
    log = RecordLog(path / SAMPLES)
    done = log.read()
    try:
        if completions is not None:
            if not done:
                for r in completions:
                    log.append({"temperature": None, "user": r["user"], "sample": r["sample"], "text": r["text"]})
                done = log.read()
        else:
            done += list(_generate(config, engine, cases, titles, done, log, on_record))
    finally:
        log.close()
    ptokens = _ptoken_records(config, engine, cases, titles, path, on_record) if completions is None else []
    summary = summarise(config, data, cases, done, ptokens, backend)
    dump_json(path / SUMMARY, summary)
    return summary


def _generate(config, engine, cases, titles, done, log, on_record):
    have = {(r["temperature"], r["user"], r["sample"]) for r in done}
    todo = [(t, c, s) for c in cases for t in config.temperatures for s in range(config.samples)
            if (t, c.user, s) not in have]  # one user's samples in a row: backends reuse the prompt
    specs = [GenerateSpec(prompt=prompt(c, titles, config.k), max_tokens=config.tokens, temperature=t,
                          seed=sample_seed(config.seed, c.user, s, t), filters=config.filters) for t, c, s in todo]
    for index, text in engine.generate(specs):
        t, c, s = todo[index]
        record = {"temperature": t, "user": c.user, "sample": s, "text": text, "seed": specs[index].seed}
        log.append(record)
        if on_record:
            on_record()
        yield record


def exact_engine(engine) -> bool:
    return engine is not None and all(hasattr(engine, m) for m in EXACT_METHODS)


def _ptoken_records(config, engine, cases, titles, path, on_record) -> list[dict]:
    """The first-slot P_token records, one per user, computed for users that lack one (exact backends only)."""
    log = RecordLog(path / PTOKEN)
    records = log.read()
    if not config.ptoken or not exact_engine(engine):
        return records
    have = {r["user"] for r in records}
    shown = {m: display(t) for m, t in titles.items()}
    trie = None
    try:
        for c in cases:
            if c.user in have:
                continue
            trie = trie or first_slot.TitleTrie.build(engine, shown)
            context = first_slot.open_context(engine, prompt(c, titles, config.k))
            cached = CachedModel(engine)
            results = first_slot.first_slot(cached, context, trie, c.held_out, config.temperatures, config.filters,
                                        config.ptoken_budget)
            record = {"user": c.user, "held_out": c.held_out, "results": results}
            log.append(record)
            records.append(record)
            if on_record:
                on_record()
    finally:
        log.close()
    return records


def summarise(config: RecommendConfig, data: Dataset, cases: list[Case], records: list[dict], ptokens: list[dict],
              backend: dict) -> dict:
    """Per temperature (or for the completions file): the metrics with intervals over users, and P_token."""
    catalogue = Catalogue({m: mv.title for m, mv in data.movies.items()}, data.popularity())
    ranks = metrics.popularity_ranks(data.popularity())
    users = {c.user for c in cases}
    labels = [None] if config.completions else list(config.temperatures)
    groups = []
    for t in labels:
        rs = [r for r in records if r["temperature"] == t and r["user"] in users
              and (config.completions or r["sample"] < config.samples)]
        scored = [metrics.score_sample(catalogue, r["user"], r["sample"], r["text"], config.k) for r in rs]
        label = COMPLETIONS if t is None else f"T={t:g}"
        group = metrics.summarise_group(cases, scored, ranks, len(data.movies), config.seed, label)
        group.update(label=label, temperature=t, top=_top(scored, catalogue), unmatched=_unmatched(scored),
                     ptoken=_ptoken_summary(ptokens, t, users, config, label) if t is not None else None)
        groups.append(group)
    return {
        "schema": SCHEMA, "backend": backend.get("name"), "model": backend.get("model"),
        "data": {"path": config.data, "layout": data.layout, "movies": len(data.movies),
                 "ratings": len(data.ratings), "skipped": data.skipped, "notes": list(data.notes)},
        "users": len(cases), "history": config.history, "k": config.k, "samples": config.samples,
        "seed": config.seed, "max_tokens": config.tokens, "filters": config.filters.to_dict(),
        "completions": config.completions or None, "groups": groups,
    }


def _top(scored, catalogue: Catalogue, n: int = 5) -> list[list]:
    counts: dict[int, int] = {}
    for s in scored:
        for m in s.matches:
            if m.movie is not None:
                counts[m.movie] = counts.get(m.movie, 0) + 1
    best = sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:n]
    return [[display(catalogue.titles[m]), c] for m, c in best]


def _unmatched(scored, n: int = 5) -> list[str]:
    seen: list[str] = []
    for s in scored:
        for m in s.matches:
            if m.movie is None and m.text not in seen and len(seen) < n:
                seen.append(m.text)
    return seen


def _ptoken_summary(ptokens: list[dict], t: float, users: set, config: RecommendConfig, label: str) -> dict | None:
    rows = [x for r in ptokens if r["user"] in users for x in r["results"] if x["temperature"] == t]
    if not rows:
        return None
    lp = [x["logprob"] for x in rows]
    finite = [v for v in lp if v is not None]
    rank, rank_hi = [x["rank"] for x in rows], [x["rank_hi"] for x in rows]
    return {"users": len(rows), "budget": config.ptoken_budget,
            "logprob": metrics.with_interval(finite, metrics.interval_rng(config.seed, "ptoken_logprob", label)),
            "filtered_out": len(lp) - len(finite),
            "median_rank": float(np.median(rank)), "median_rank_hi": float(np.median(rank_hi)),
            "top_k": metrics.with_interval([float(hi <= config.k) for hi in rank_hi],
                                           metrics.interval_rng(config.seed, "ptoken_top_k", label)),
            "top_k_hi": float(np.mean([r <= config.k for r in rank])),
            "exact_ranks": int(sum(a == b for a, b in zip(rank, rank_hi)))}
