"""Distinct valid outputs per sample budget: exact expected curve, observed curve, the ideal uniform sampler's."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from deval.analyses.calibration import Rule, sample_answer
from deval.core.exact import CachedModel, ExactModel, TaskSession, ValidityOracle, Vocab, sample_rng
from deval.core.validsets import ValidSetTask

SCHEMA = "deval.diversity/1"
PRUNE = 1e-4  # answer prefixes less likely than this are not expanded (their mass is reported as unexplored)
MAX_NODES = 400  # forward passes the exact enumeration may spend per model


def ideal_curve(k: int, n: np.ndarray) -> np.ndarray:
    """Expected distinct items from n draws of the uniform sampler over k items: k (1 - (1 - 1/k)^n)."""
    return k * (1.0 - (1.0 - 1.0 / k) ** np.asarray(n, dtype=float))


def expected_curve(q: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Expected distinct items from n draws when item x is drawn with probability q_x (the rest is invalid)."""
    q = np.asarray(q, dtype=float)[:, None]
    return (1.0 - (1.0 - q) ** np.asarray(n, dtype=float)[None, :]).sum(axis=0)


def observed_curve(answers: list[str | None]) -> np.ndarray:
    """Distinct valid answers among the first n draws, n = 1..len(answers)."""
    seen: set[str] = set()
    out = []
    for a in answers:
        if a is not None:
            seen.add(a)
        out.append(len(seen))
    return np.array(out, dtype=int)


def member_probabilities(cached: CachedModel, oracle: ValidityOracle, prompt: list[int], rule: Rule,
                         temperature: float, max_tokens: int, prune: float = PRUNE,
                         max_nodes: int = MAX_NODES) -> tuple[dict[str, float], float]:
    """Probability that one sample spells each member, summed over every tokenisation (depth-first, pruned).

    Returns (probabilities, unexplored mass): the unexplored mass is what pruning and the node budget left out,
    so each probability is a lower bound that is off by at most that much in total.
    """
    probs = {m: 0.0 for m in oracle.members}
    unexplored = 0.0
    stack = [((), b"", 0.0)]
    nodes = 0
    while stack:
        tokens, answer, logq = stack.pop()
        if nodes >= max_nodes or len(tokens) >= max_tokens:
            unexplored += float(np.exp(logq))
            continue
        nodes += 1
        moves = oracle.moves(answer)
        lp = rule.sampling_logprobs(cached.next_logprobs(prompt + list(tokens)), moves.valid, temperature)
        for tok, member in moves.finish.items():
            if np.isfinite(lp[tok]):
                probs[member] += float(np.exp(logq + lp[tok]))
        for tok in np.flatnonzero(moves.extend & np.isfinite(lp)):
            child = logq + lp[tok]
            if child < np.log(prune):
                unexplored += float(np.exp(child))
            else:
                stack.append((tokens + (int(tok),), answer + oracle.vocab.bytes[tok], child))
    return probs, unexplored


def sample_records(session: TaskSession, rule: Rule, samples: int, temperature: float, seed: int, label: str,
                   skip: frozenset = frozenset()) -> Iterator[dict]:
    """One sampled answer per index not in `skip`; sample i uses the same generator for every model."""
    for i in range(samples):
        if i in skip:
            continue
        before = session.cached.calls
        answer = sample_answer(session.cached, session.oracle, list(session.prompt), rule, temperature,
                               session.max_tokens, sample_rng(seed, session.task.name, i))
        yield {"model": label, "index": i, "answer": answer, "passes": session.cached.calls - before}


def exact_record(session: TaskSession, rule: Rule, temperature: float, label: str) -> dict:
    """Each member's exact probability under the rule (pruned enumeration), with what it left unexplored."""
    before = session.cached.calls
    q, unexplored = member_probabilities(session.cached, session.oracle, list(session.prompt), rule, temperature,
                                         session.max_tokens)
    return {"model": label, "member_probabilities": q, "unexplored_mass": unexplored,
            "passes": session.cached.calls - before}


def summarise(task: ValidSetTask, samples: list[dict], exact: dict) -> dict:
    """One model's curves and counts from its sample records (any order) and its exact record."""
    answers = [r["answer"] for r in sorted(samples, key=lambda r: r["index"])]
    n = np.arange(1, len(answers) + 1)
    k = len(task.members)
    q = exact["member_probabilities"]
    valid = [a for a in answers if a is not None]
    return {
        "members": k, "samples": len(answers), "answers": answers,
        "observed": observed_curve(answers).tolist(),
        "expected": expected_curve(np.array(list(q.values())), n).tolist(),
        "ideal": ideal_curve(k, n).tolist(),
        "member_probabilities": q, "validity_probability": float(sum(q.values())),
        "unexplored_mass": exact["unexplored_mass"],
        "validity_rate": len(valid) / len(answers) if answers else float("nan"),
        "distinct_valid": len(set(valid)), "forward_passes": int(sum(r.get("passes", 0) for r in [*samples, exact])),
    }


def diversity(task: ValidSetTask, model: ExactModel, rule: Rule, samples: int, temperature: float, seed: int,
              vocab: Vocab | None = None) -> dict:
    """N samples under the rule, their distinct-valid curve, the exact expected curve and the ideal curve."""
    session = TaskSession.open(task, model, vocab)
    drawn = list(sample_records(session, rule, samples, temperature, seed, ""))
    return summarise(task, drawn, exact_record(session, rule, temperature, ""))
