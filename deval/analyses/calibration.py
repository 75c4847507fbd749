"""Order and shape calibration on valid-set tasks: per-step valid sets, cutoff rules against the oracle, samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from scipy.stats import rankdata

from deval.core.sampling import Filters
from deval.core.exact import CachedModel, ExactModel, TaskSession, ValidityOracle, Vocab, sample_rng
from deval.core.sampling import draw, sampling_logprobs, with_temperature
from deval.core.validsets import ValidSetTask

SCHEMA = "deval.calibration/1"
DEFAULT_TOP_K = (1, 5, 20, 50)
DEFAULT_TOP_P = (0.5, 0.9, 0.95)
DEFAULT_MIN_P = (0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Rule:
    """A cutoff rule: decoding filters at the temperature, the full distribution (no filters), or the oracle."""

    label: str
    filters: Filters = field(default_factory=Filters)
    oracle: bool = False

    def kept(self, logp: np.ndarray, valid: np.ndarray, temperature: float) -> np.ndarray:
        if self.oracle:
            return valid.copy()
        return np.isfinite(sampling_logprobs(logp, temperature, self.filters))

    def sampling_logprobs(self, logp: np.ndarray, valid: np.ndarray, temperature: float) -> np.ndarray:
        if self.oracle:
            tempered = with_temperature(logp, temperature)
            if not valid.any():
                return tempered
            return with_temperature(np.where(valid, tempered, -np.inf), 1.0)
        return sampling_logprobs(logp, temperature, self.filters)

    def to_dict(self) -> dict:
        return {"label": self.label, "filters": self.filters.to_dict(), "oracle": self.oracle}

    @classmethod
    def from_dict(cls, d: dict) -> "Rule":
        return cls(label=d["label"], filters=Filters(**d["filters"]), oracle=bool(d["oracle"]))


def rule_grid(top_k=DEFAULT_TOP_K, top_p=DEFAULT_TOP_P, min_p=DEFAULT_MIN_P,
              order: str = "filters-first") -> list[Rule]:
    """The oracle, no cutoff, then top-k, top-p and min-p at each setting."""
    return ([Rule("oracle", oracle=True), Rule("none")]
            + [Rule(f"top-k {k}", Filters(top_k=k, order=order)) for k in top_k]
            + [Rule(f"top-p {p:g}", Filters(top_p=p, order=order)) for p in top_p]
            + [Rule(f"min-p {p:g}", Filters(min_p=p, order=order)) for p in min_p])


@dataclass(frozen=True)
class Node:
    """One step of the trie over the members' canonical tokenisations: the answer's tokens so far."""

    tokens: tuple[int, ...]
    text: str
    kind: str  # 'first' (no answer yet), 'inside' (part of a member), 'end' (a complete member: should stop)


def trie_nodes(task: ValidSetTask, model: ExactModel) -> list[Node]:
    """Every prefix of every member's canonical tokenisation, and each complete member, in trie order."""
    seen: dict[tuple[int, ...], Node] = {}
    members = set(task.members)
    for member in task.members:
        toks = tuple(model.tokenize(member))
        for depth in range(len(toks) + 1):
            prefix = toks[:depth]
            if prefix in seen:
                continue
            text = b"".join(model.token_bytes(t) for t in prefix).decode("utf-8", "replace")
            kind = "first" if depth == 0 else "end" if text in members else "inside"
            seen[prefix] = Node(prefix, text, kind)
    return sorted(seen.values(), key=lambda n: (len(n.tokens), n.tokens))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney); NaN if a class is empty."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def node_metrics(logp: np.ndarray, valid: np.ndarray, rules: list[Rule], temperature: float) -> dict:
    """Validity mass, shape diversity exp(H(p|V))/|V|, AUROC and each rule's precision and recall at one step."""
    lp = with_temperature(logp, temperature)
    p = np.exp(lp)
    n_valid = int(valid.sum())
    mass = float(p[valid].sum())
    if n_valid and mass > 0:
        q = p[valid] / mass
        h = float(-np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)))
        shape = float(np.exp(h) / n_valid)
    else:
        shape = float("nan")
    rules_out = {}
    for rule in rules:
        kept = rule.kept(logp, valid, temperature)
        hit = int((kept & valid).sum())
        rules_out[rule.label] = {"precision": hit / max(int(kept.sum()), 1) if kept.any() else float("nan"),
                                 "recall": hit / n_valid if n_valid else float("nan"), "kept": int(kept.sum())}
    return {"valid_tokens": n_valid, "validity_mass": mass, "shape_diversity": shape,
            "auroc": auroc(lp, valid), "rules": rules_out}


def answer_bytes(model: ExactModel, tokens) -> bytes:
    return b"".join(model.token_bytes(int(t)) for t in tokens)


def sample_answer(cached: CachedModel, oracle: ValidityOracle, prompt: list[int], rule: Rule, temperature: float,
                  max_tokens: int, rng: np.random.Generator) -> str | None:
    """Draw one answer token by token under the rule; the member it spells, or None once it leaves the valid set."""
    tokens: list[int] = []
    answer = b""
    for _ in range(max_tokens):
        moves = oracle.moves(answer)
        logp = cached.next_logprobs(prompt + tokens)
        tok = draw(rule.sampling_logprobs(logp, moves.valid, temperature), rng)
        if tok in moves.finish:
            return moves.finish[tok]
        if not moves.extend[tok]:
            return None
        tokens.append(tok)
        answer += oracle.vocab.bytes[tok]
    return None


def sequence_stats(answers: list[str | None], members: tuple[str, ...]) -> dict:
    valid = [a for a in answers if a is not None]
    distinct = sorted(set(valid))
    return {"samples": len(answers), "validity_rate": len(valid) / len(answers) if answers else float("nan"),
            "distinct_valid": len(distinct), "coverage": len(distinct) / len(members),
            "counts": {m: valid.count(m) for m in distinct}}


def node_records(session: TaskSession, rules: list[Rule], temperature: float,
                 skip: frozenset = frozenset()) -> Iterator[dict]:
    """One record per trie node not in `skip` (token tuples), in trie order; `passes` is its forward passes."""
    task, model = session.task, session.model
    for node in trie_nodes(task, model):
        if node.tokens in skip:
            continue
        before = session.cached.calls
        valid = session.oracle.moves(answer_bytes(model, node.tokens)).valid
        m = node_metrics(session.cached.next_logprobs(session.prompt + node.tokens), valid, rules, temperature)
        yield {"task": task.name, "tokens": list(node.tokens), "text": node.text, "kind": node.kind,
               "depth": len(node.tokens), **m, "passes": session.cached.calls - before}


def sample_records(session: TaskSession, rules: list[Rule], samples: int, temperature: float, seed: int,
                   skip: frozenset = frozenset()) -> Iterator[dict]:
    """One sampled answer per (rule, index) not in `skip`; sample i of a rule draws from its own seeded generator."""
    name = session.task.name
    for rule in rules:
        for i in range(samples):
            if (rule.label, i) in skip:
                continue
            before = session.cached.calls
            answer = sample_answer(session.cached, session.oracle, list(session.prompt), rule, temperature,
                                   session.max_tokens, sample_rng(seed, name, rule.label, i))
            yield {"task": name, "rule": rule.label, "index": i, "answer": answer,
                   "passes": session.cached.calls - before}


def summarise(task: ValidSetTask, nodes: list[dict], samples: list[dict], rules: list[Rule]) -> dict:
    """The task's calibration summary from its node and sample records, whatever order they were written in."""
    nodes = sorted(nodes, key=lambda r: (len(r["tokens"]), r["tokens"]))
    sequences = {}
    for rule in rules:
        drawn = sorted((r for r in samples if r["rule"] == rule.label), key=lambda r: r["index"])
        sequences[rule.label] = sequence_stats([r["answer"] for r in drawn], task.members)
    return {"members": len(task.members), "nodes": len(nodes), "steps": aggregate(nodes, rules),
            "sequences": sequences, "forward_passes": int(sum(r.get("passes", 0) for r in nodes + samples))}


def calibrate(task: ValidSetTask, model: ExactModel, rules: list[Rule], samples: int, temperature: float,
              seed: int, vocab: Vocab | None = None) -> tuple[dict, list[dict]]:
    """The task's calibration summary and one record per trie node, in memory."""
    session = TaskSession.open(task, model, vocab)
    nodes = list(node_records(session, rules, temperature))
    drawn = list(sample_records(session, rules, samples, temperature, seed))
    return summarise(task, nodes, drawn, rules), nodes


def aggregate(records: list[dict], rules: list[Rule]) -> dict:
    """Means over trie nodes: all nodes, and by kind (first step, inside a member, after a complete member)."""
    out = {}
    groups = {"all": records, **{k: [r for r in records if r["kind"] == k] for k in ("first", "inside", "end")}}
    for name, rs in groups.items():
        if not rs:
            continue

        def mean(values):
            arr = np.array([np.nan if v is None else v for v in values], dtype=float)
            return float(np.nanmean(arr)) if np.any(~np.isnan(arr)) else float("nan")

        out[name] = {
            "nodes": len(rs), "valid_tokens": mean([r["valid_tokens"] for r in rs]),
            "validity_mass": mean([r["validity_mass"] for r in rs]),
            "shape_diversity": mean([r["shape_diversity"] for r in rs]), "auroc": mean([r["auroc"] for r in rs]),
            "rules": {rule.label: {"precision": mean([r["rules"][rule.label]["precision"] for r in rs]),
                                   "recall": mean([r["rules"][rule.label]["recall"] for r in rs])}
                      for rule in rules},
        }
    return out
