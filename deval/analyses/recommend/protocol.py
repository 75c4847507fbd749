"""The recommendation protocol: per user the held-out item, the history shown, the prompt (our reconstruction).

Per user, ratings are ordered by (timestamp, movie id); the last one rated >= LIKED is held out; the prompt lists
the `history` liked titles rated just before it (oldest first) and asks for k recommendations. Users with fewer
liked titles before the held-out one are not eligible. Users are drawn without replacement by a seeded draw.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from deval.analyses.recommend.data import Dataset
from deval.analyses.recommend.titles import display
from deval.errors import ConfigError

LIKED = 4.0  # a rating at or above this counts as liked (MovieLens' 5-star scale)
PROMPT = ("Here are movies I liked, from the oldest to the most recent:\n{history}\n\n"
          "Recommend {k} other movies I would like to watch next. Answer with a numbered list of {k} movie titles "
          "with their year, one per line, like \"1. Title (Year)\", and nothing else.")


@dataclass(frozen=True)
class Case:
    """One user's task: the liked history shown (oldest first), every movie rated before the held-out one
    (for the repeat rate), and the held-out movie."""

    user: int
    history: tuple[int, ...]
    seen: tuple[int, ...]
    held_out: int

    def to_dict(self) -> dict:
        return {"user": self.user, "history": list(self.history), "seen": list(self.seen),
                "held_out": self.held_out}

    @classmethod
    def from_dict(cls, d: dict) -> "Case":
        return cls(user=int(d["user"]), history=tuple(d["history"]), seen=tuple(d["seen"]),
                   held_out=int(d["held_out"]))


def user_case(ratings: list, history: int) -> Case | None:
    """The case of one user's ratings (any order), or None when fewer than `history` liked titles precede
    the last liked one."""
    ordered = sorted(ratings, key=lambda r: (r.timestamp, r.movie))
    liked = [i for i, r in enumerate(ordered) if r.rating >= LIKED]
    if not liked:
        return None
    last = liked[-1]
    before = [ordered[i].movie for i in liked[:-1]]
    if len(before) < history:
        return None
    return Case(user=ordered[last].user, history=tuple(before[len(before) - history:]),
                seen=tuple(r.movie for r in ordered[:last]), held_out=ordered[last].movie)


def eligible_cases(data: Dataset, history: int) -> dict[int, Case]:
    """Every user with a case, by user id."""
    by_user: dict[int, list] = {}
    for r in data.ratings:
        by_user.setdefault(r.user, []).append(r)
    cases = {u: user_case(rs, history) for u, rs in sorted(by_user.items())}
    return {u: c for u, c in cases.items() if c is not None}


def draw_users(cases: dict[int, Case], n: int, seed: int) -> list[Case]:
    """n cases drawn without replacement, by a generator keyed by (seed, 'users') alone; in user-id order."""
    if n > len(cases):
        raise ConfigError(f"--users {n} but only {len(cases)} users have a held-out liked movie after enough "
                          f"history; lower --users or --history")
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(zlib.crc32(b"users"),)))
    ids = sorted(cases)
    chosen = sorted(int(ids[i]) for i in rng.choice(len(ids), size=n, replace=False))
    return [cases[u] for u in chosen]


def prompt(case: Case, titles: dict[int, str], k: int) -> str:
    """The prompt for one case: the history in display form ('The Matrix (1999)'), asking for k titles."""
    lines = "\n".join(f"{i}. {display(titles[m])}" for i, m in enumerate(case.history, 1))
    return PROMPT.format(history=lines, k=k)


def sample_seed(seed: int, user: int, sample: int, temperature: float) -> int:
    """A per-sample seed from (seed, user, sample, temperature) alone: samples run in any order and resume."""
    key = (zlib.crc32(b"recommend"), user, sample, zlib.crc32(f"{temperature:g}".encode()))
    return int(np.random.SeedSequence(entropy=seed, spawn_key=key).generate_state(1, dtype=np.uint32)[0])
