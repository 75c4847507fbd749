"""Did the server sample with filters deval did not account for? Evidence from the draws themselves (pure).

llama.cpp-based servers default to top_k 40, top_p 0.95, min_p 0.05 unless told otherwise. At each generated
token whose top-k shows at least 40 candidates, the set those defaults keep is known exactly from the raw
logprobs (the top-k are the likeliest tokens). Were the server sampling without them, as deval assumes, each draw
would leave that set with probability q_t; seeing no draw leave it across a run has probability prod(1 - q_t).
Below ALPHA the run is flagged `server-filtered`: its draws (and the items read from them) came from a truncated
distribution while P_token is computed untruncated. Ours: the test and its threshold are deval's, not a server's.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass, field

from deval.backends.logprobs import Choice, Token

DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05
ALPHA = 0.01  # flag when unfiltered sampling would have left the default set at least once with prob >= 1 - ALPHA
FLAG = "server-filtered"
NO_HIDDEN_FILTERS = ("api.openai.com",)  # hosts known to sample without top-k/min-p: no neutral values needed
UNNEUTRAL = "server-sampler-unknown"  # the server was not told neutral top_k/min_p: its defaults may filter draws


def excluded_share(token: Token) -> tuple[float, bool] | None:
    """(probability a T=1 unfiltered draw falls outside the default filters' set, whether this draw did), or None
    where the top-k is too short to know the set.

    Each filter keeps a prefix of the tokens sorted by probability, so the set is the shortest of the three
    prefixes. With fewer than 40 tokens visible only min-p is used, and only where its cut lies inside what is
    visible: a superset of the true set, so the share is a lower bound and the test stays conservative."""
    if not math.isfinite(token.logprob):
        return None
    p = [math.exp(a.logprob) for a in token.top if math.isfinite(a.logprob)]
    if not p:
        return None
    floor = DEFAULT_MIN_P * max(p)
    if len(p) < DEFAULT_TOP_K and min(p) >= floor:  # the usual short top-k: nothing to know, no sort needed
        return None
    p.sort(reverse=True)
    kept = [v for v in p[:DEFAULT_TOP_K] if v >= floor]
    if len(p) >= DEFAULT_TOP_K:  # top-p on the renormalised top 40
        total, cumulative = sum(p[:DEFAULT_TOP_K]), 0.0
        for i, v in enumerate(kept):
            cumulative += v / total
            if cumulative >= DEFAULT_TOP_P:
                kept = kept[: i + 1]
                break
    smallest = math.log(kept[-1])
    return max(0.0, 1.0 - sum(kept)), token.logprob < smallest - 1e-9


@dataclass
class FilterEvidence:
    """Counts over many draws: how many left the default set, how many would have been expected to."""

    draws: int = 0
    expected: float = 0.0
    observed: int = 0
    log_p_none: float = 0.0  # log prob(no draw leaves the set | unfiltered sampling)
    flagged_runs: int = 0
    runs: set = field(default_factory=set)

    def add(self, other: "FilterEvidence") -> None:
        self.draws += other.draws
        self.expected += other.expected
        self.observed += other.observed
        self.log_p_none += other.log_p_none

    def to_dict(self) -> dict:
        return {"draws_checked": self.draws, "expected_outside_default_filters": round(self.expected, 3),
                "observed_outside_default_filters": self.observed, "flagged_runs": self.flagged_runs,
                "p_no_draw_outside": math.exp(self.log_p_none) if self.draws else None}


def run_evidence(choices: list[Choice]) -> FilterEvidence:
    """The evidence in one run's generated tokens."""
    ev = FilterEvidence()
    for choice in choices:
        for token in choice.tokens:
            share = excluded_share(token)
            if share is None:
                continue
            q, out = share
            ev.draws += 1
            ev.expected += q
            ev.observed += int(out)
            ev.log_p_none += math.log1p(-min(q, 1 - 1e-12))
    return ev


def server_filter_flags(ev: FilterEvidence) -> tuple[str, ...]:
    """FLAG when no draw left the default set although unfiltered sampling would have (prob >= 1 - ALPHA)."""
    return (FLAG,) if ev.draws and ev.observed == 0 and ev.log_p_none < math.log(ALPHA) else ()


def run_flags(spec, caps, base_url: str, choices: list[Choice], evidence: FilterEvidence) -> tuple[str, ...]:
    """A run's flags about the server's sampler: UNNEUTRAL where it was not told neutral top_k/min_p (and is not
    known to sample without them), FLAG where its draws show filters; the evidence is added to `evidence`."""
    host = urllib.parse.urlsplit(base_url).hostname or ""
    unknown = () if {"top_k", "min_p"} <= set(caps.sampling) or host in NO_HIDDEN_FILTERS else (UNNEUTRAL,)
    if spec.temperature != 1.0 or spec.filters.active or caps.logprobs == "processed":
        return unknown
    ev = run_evidence(choices)
    flags = server_filter_flags(ev)
    evidence.add(ev)
    evidence.flagged_runs += bool(flags)
    return unknown + flags
