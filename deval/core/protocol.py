"""The backend protocol: what every backend (mock, local llama.cpp, OpenAI-compatible) speaks to the core."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np

from deval.core.answers import completion_prompt
from deval.core.sampling import Filters, logsumexp
from deval.core.tasks import Task

POSITION_MODES = ("free", "constrained")


@dataclass(frozen=True)
class RunSpec:
    """One run: a prompt and the number of item positions to measure."""

    task: Task
    run: int
    seed: int
    mode: str
    steps: int
    temperature: float = 1.0
    filters: Filters = field(default_factory=Filters)
    derive_temperatures: tuple[float, ...] = ()  # where an exact backend records Step.trie_logprobs at
    positions: str = "free"  # free | constrained (docs/protocol.md)

    @property
    def prompt(self) -> str:
        return self.task.render_prompt(self.mode, self.steps)

    @property
    def limit(self) -> int:
        """Item positions one generation yields: all of them in sequence mode, one in independent mode."""
        return self.steps if self.mode == "sequence" else 1

    @property
    def completion(self) -> str:
        """The prompt for a model without a chat template (or a completions route): it ends with the cue."""
        return completion_prompt(self.prompt, self.task.cue)


def run_seed(seed: int, task_name: str, run: int) -> int:
    """A per-run seed that depends only on (seed, task, run): runs can execute in any order and resume."""
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(zlib.crc32(task_name.encode()), run))
    return int(sequence.generate_state(1, dtype=np.uint64)[0])


@dataclass(frozen=True)
class TrieLogprobs:
    """One step's item trie at T=1, enough to give p_t(item) exactly at each of `temperatures` (deval.analyses.sweep).

    nodes[i] is a token path from the item's start that has children; children[i] are its child tokens,
    logprobs[i] their T=1 log-probabilities (no filters) and log_z[i][j] = log sum_v exp(log p_v / temperatures[j])
    over the whole vocabulary at that node. At temperature T a child's log-probability is
    logprobs / T - log_z. `ends` pairs each path where a spelling ends with its item index.
    """

    temperatures: tuple[float, ...]
    nodes: tuple[tuple[int, ...], ...]
    children: tuple[tuple[int, ...], ...]
    logprobs: tuple[tuple[float, ...], ...]
    log_z: tuple[tuple[float, ...], ...]
    ends: tuple[tuple[tuple[int, ...], int], ...]

    @classmethod
    def from_rows(cls, children: dict, ends: dict, rows: dict, temperatures: Sequence[float]) -> "TrieLogprobs":
        """From a trie (node -> child tokens, node -> item) and the T=1 log-softmax row at every node with children."""
        nodes = sorted(children, key=lambda n: (len(n), n))
        temps = tuple(float(t) for t in temperatures)
        kids = tuple(tuple(sorted(int(c) for c in children[n])) for n in nodes)
        return cls(temperatures=temps, nodes=tuple(tuple(int(t) for t in n) for n in nodes), children=kids,
                   logprobs=tuple(tuple(float(rows[n][c]) for c in k) for n, k in zip(nodes, kids)),
                   log_z=tuple(tuple(float(logsumexp(np.asarray(rows[n], dtype=np.float64) / t)) for t in temps)
                               for n in nodes),
                   ends=tuple(sorted((tuple(int(t) for t in n), int(i)) for n, i in ends.items())))

    def to_record(self) -> dict:
        return {"temperatures": list(self.temperatures),
                "nodes": [{"path": list(n), "children": list(c), "logprobs": list(lp), "log_z": list(z)}
                          for n, c, lp, z in zip(self.nodes, self.children, self.logprobs, self.log_z)],
                "ends": [[list(n), i] for n, i in self.ends]}

    @classmethod
    def from_record(cls, r: dict) -> "TrieLogprobs":
        nodes = r["nodes"]
        return cls(temperatures=tuple(float(t) for t in r["temperatures"]),
                   nodes=tuple(tuple(int(t) for t in n["path"]) for n in nodes),
                   children=tuple(tuple(int(t) for t in n["children"]) for n in nodes),
                   logprobs=tuple(tuple(float(v) for v in n["logprobs"]) for n in nodes),
                   log_z=tuple(tuple(float(v) for v in n["log_z"]) for n in nodes),
                   ends=tuple((tuple(int(t) for t in n), int(i)) for n, i in r["ends"]))


@dataclass(frozen=True)
class Step:
    """The model's view at one item position.

    probs[i] is p_t(item i) under the distribution the sampler draws from (temperature and filters applied).
    Where a backend sees only a top-k, `tail` is the mass it could not see: each item's true probability
    lies in [probs[i], probs[i] + tail] (and the tail's total is shared), `missing` lists items absent from
    the visible top-k, and `tail_cap` (when known) is the most one unseen token can hold (the smallest top-k
    probability): an item gains at most one tail_cap per unseen spelling (see metrics.tail_bounds). An exact
    backend reports tail 0.
    `sampled` is the index of the item the model produced, or None when it produced something off the set.
    `item_logprobs`, where a backend can give it, holds per item the T=1 log-probabilities (no filters) of the
    single tokens that spell it at this step; from these P_token at any temperature follows exactly
    (deval.analyses.sweep). None where unknown or where some spelling takes more than one token.
    `trie_logprobs`, where the run asked for it (RunSpec.derive_temperatures) and the backend is exact, covers
    multi-token spellings too: the T=1 item trie with each node's normalisers at those temperatures.
    """

    task: str
    run: int
    step: int
    probs: tuple[float, ...]
    sampled: int | None
    text: str
    final: bool = False
    tail: float = 0.0
    missing: tuple[int, ...] = ()
    flags: tuple[str, ...] = ()
    item_logprobs: tuple[tuple[float, ...], ...] | None = None
    trie_logprobs: TrieLogprobs | None = None
    tail_cap: float | None = None

    def to_record(self) -> dict:
        record = {
            "task": self.task, "run": self.run, "step": self.step, "probs": list(self.probs),
            "on_set_mass": float(sum(self.probs)), "sampled": self.sampled, "text": self.text,
            "final": self.final, "tail": self.tail, "missing": list(self.missing), "flags": list(self.flags),
            "tail_cap": self.tail_cap,
        }
        if self.item_logprobs is not None:
            record["item_logprobs"] = [list(x) for x in self.item_logprobs]
        if self.trie_logprobs is not None:
            record["trie_logprobs"] = self.trie_logprobs.to_record()
        return record

    @classmethod
    def from_record(cls, r: dict) -> "Step":
        return cls(task=r["task"], run=int(r["run"]), step=int(r["step"]), probs=tuple(r["probs"]),
                   sampled=r["sampled"], text=r.get("text", ""), final=bool(r.get("final", False)),
                   tail=float(r.get("tail", 0.0)), missing=tuple(r.get("missing", ())),
                   flags=tuple(r.get("flags", ())), tail_cap=r.get("tail_cap"),
                   item_logprobs=None if r.get("item_logprobs") is None
                   else tuple(tuple(float(v) for v in x) for x in r["item_logprobs"]),
                   trie_logprobs=None if r.get("trie_logprobs") is None
                   else TrieLogprobs.from_record(r["trie_logprobs"]))


@dataclass(frozen=True)
class GenerateSpec:
    """One free-text generation: the prompt is the user message (raw: continued as is, no chat template)."""

    prompt: str
    max_tokens: int
    temperature: float
    seed: int
    stop: tuple[str, ...] = ()
    filters: Filters = Filters()
    raw: bool = False


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """The text up to the first stop string (which is dropped), and whether one was found."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[:min(cuts)], True) if cuts else (text, False)


class Backend(Protocol):
    """What a backend offers the core.

    `measure` takes any number of runs and yields their steps as they are measured, in any order across runs
    but in order within a run; the last step of each run has final=True. A backend that runs requests
    concurrently interleaves runs. Randomness comes only from each RunSpec's seed. `generate` writes free text
    (stopping at EOS, a stop string, which is not included, or max_tokens), seeded by each GenerateSpec.
    """

    name: str
    model: str
    exact: bool

    def describe(self) -> dict: ...

    def measure(self, runs: Sequence[RunSpec]) -> Iterator[Step]: ...

    def generate(self, specs: Sequence[GenerateSpec]) -> Iterator[tuple[int, str]]:
        """Free text for each spec: yields (index into specs, text) as each finishes (any order over HTTP)."""
        ...

    def close(self) -> None: ...
