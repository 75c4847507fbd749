"""Recommendation metrics: per user from the parsed, matched lists of its samples; means over users with
bootstrap intervals over users. Pure functions; randomness only from explicit generators."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from deval.analyses.recommend.protocol import Case
from deval.analyses.recommend.titles import Catalogue, Match, parse_list
from deval.core.metrics import bootstrap_ci

PER_USER = ("hit", "can_hit", "hallucination", "repeat", "distinct", "distinct_ratio", "popularity_rank")


@dataclass(frozen=True)
class Scored:
    """One sample: its matched titles (at most k) and how many it gave beyond k."""

    user: int
    sample: int
    matches: tuple[Match, ...]
    cut: int


def score_sample(catalogue: Catalogue, user: int, sample: int, text: str, k: int) -> Scored:
    titles, cut = parse_list(text, k)
    return Scored(user, sample, tuple(catalogue.match(t) for t in titles), cut)


def popularity_ranks(popularity: dict[int, int]) -> dict[int, float]:
    """Each movie's popularity rank as a share of the catalogue: 1/N for the most rated, 1 for the least
    (ties share their average rank)."""
    from scipy.stats import rankdata

    ids = sorted(popularity)
    ranks = rankdata([-popularity[m] for m in ids], method="average")
    return {m: float(r) / len(ids) for m, r in zip(ids, ranks)}


def user_metrics(case: Case, samples: list[Scored], ranks: dict[int, float]) -> dict:
    """One user's values over its n samples (see docs/recommend.md for each definition)."""
    lists = [[m.movie for m in s.matches if m.movie is not None] for s in samples]
    hits = [case.held_out in ids for ids in lists]
    total = sum(len(s.matches) for s in samples)
    matched = [m for ids in lists for m in ids]
    seen = set(case.seen)
    nan = float("nan")
    return {
        "user": case.user, "samples": len(samples),
        "hit": float(np.mean(hits)) if samples else nan,
        "can_hit": float(any(hits)) if samples else nan,
        "titles": total,
        "hallucination": (total - len(matched)) / total if total else nan,
        "repeat": sum(m in seen for m in matched) / total if total else nan,
        "distinct": float(len(set(matched))),
        "distinct_ratio": len(set(matched)) / len(matched) if matched else nan,
        "popularity_rank": float(np.mean([ranks[m] for m in matched])) if matched else nan,
        "empty_samples": sum(1 for s in samples if not s.matches),
        "cut_titles": sum(s.cut for s in samples),
    }


def interval_rng(seed: int, *key) -> np.random.Generator:
    """One generator per interval, keyed by (seed, name, group): adding a metric moves no other interval."""
    spawn = tuple(zlib.crc32(str(k).encode()) for k in key)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=spawn))


def with_interval(values: list[float], rng: np.random.Generator) -> dict:
    """Mean over users (NaN users left out, counted) and its percentile-bootstrap 95% interval over users."""
    v = np.asarray(values, dtype=float)
    kept = v[~np.isnan(v)]
    lo, hi = bootstrap_ci(kept, rng)
    return {"mean": float(kept.mean()) if len(kept) else None, "ci": [lo, hi] if len(kept) else None,
            "users": int(len(kept))}


def summarise_group(cases: list[Case], scored: list[Scored], ranks: dict[int, float], n_catalogue: int,
                    seed: int, label: str) -> dict:
    """Per-user metrics of one temperature (or one completions file) and their means with intervals."""
    by_user: dict[int, list[Scored]] = {c.user: [] for c in cases}
    for s in scored:
        by_user[s.user].append(s)
    users = [user_metrics(c, sorted(by_user[c.user], key=lambda s: s.sample), ranks) for c in cases]
    metrics = {name: with_interval([u[name] for u in users], interval_rng(seed, name, label)) for name in PER_USER}
    recommended = {m.movie for s in scored for m in s.matches if m.movie is not None}
    kinds: dict[str, int] = {}
    for s in scored:
        for m in s.matches:
            kinds[m.how] = kinds.get(m.how, 0) + 1
    held = [ranks[c.held_out] for c in cases]
    return {
        "users": len(cases), "samples": len(scored), "metrics": metrics,
        "coverage": len(recommended) / n_catalogue if n_catalogue else None,
        "distinct_overall": len(recommended),
        "titles": int(sum(u["titles"] for u in users)), "match_kinds": kinds,
        "empty_samples": int(sum(u["empty_samples"] for u in users)),
        "cut_titles": int(sum(u["cut_titles"] for u in users)),
        "held_out_popularity_rank": float(np.mean(held)) if held else None,
        "per_user": users,
    }
