"""Distinct valid outputs per sample budget: exact expected curve, observed curve, the ideal uniform sampler's."""

from __future__ import annotations

import numpy as np

from deval.calibration import Rule, sample_answer
from deval.exact import CachedModel, ExactModel, ValidityOracle, Vocab, max_answer_tokens
from deval.validsets import ValidSetTask

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


def diversity(task: ValidSetTask, model: ExactModel, rule: Rule, samples: int, temperature: float,
              rng: np.random.Generator, vocab: Vocab | None = None) -> dict:
    """N samples under the rule, their distinct-valid curve, the exact expected curve and the ideal curve."""
    vocab = vocab or Vocab(model)
    oracle = ValidityOracle(task.members, vocab)
    cached = CachedModel(model)
    prompt = list(model.prompt_tokens(task.prompt))
    max_tokens = max_answer_tokens(task.members)
    answers = [sample_answer(cached, oracle, prompt, rule, temperature, max_tokens, rng) for _ in range(samples)]
    q, unexplored = member_probabilities(cached, oracle, prompt, rule, temperature, max_tokens)
    n = np.arange(1, samples + 1)
    k = len(task.members)
    valid = [a for a in answers if a is not None]
    return {
        "members": k, "samples": samples, "answers": answers,
        "observed": observed_curve(answers).tolist(),
        "expected": expected_curve(np.array(list(q.values())), n).tolist(),
        "ideal": ideal_curve(k, n).tolist(),
        "member_probabilities": q, "validity_probability": float(sum(q.values())), "unexplored_mass": unexplored,
        "validity_rate": len(valid) / samples if samples else float("nan"),
        "distinct_valid": len(set(valid)), "forward_passes": cached.calls,
    }
