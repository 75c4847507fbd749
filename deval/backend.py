"""The backend protocol: what every backend (mock, local llama.cpp, OpenAI-compatible) speaks to the core."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence

import numpy as np

from deval.tasks import Task

FILTER_ORDERS = ("filters-first", "temperature-first")


@dataclass(frozen=True)
class Filters:
    """Decoding filters deval applies to a distribution before sampling.

    order 'filters-first' is llama.cpp's default chain (top-k, top-p, min-p, then temperature);
    'temperature-first' is Hugging Face's and the min-p paper's (temperature, then the filters).
    """

    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    order: str = "filters-first"

    @property
    def active(self) -> bool:
        return self.top_k is not None or self.top_p is not None or self.min_p is not None

    def to_dict(self) -> dict:
        return {"top_k": self.top_k, "top_p": self.top_p, "min_p": self.min_p, "order": self.order}


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

    @property
    def prompt(self) -> str:
        return self.task.render_prompt(self.mode, self.steps)


def run_seed(seed: int, task_name: str, run: int) -> int:
    """A per-run seed that depends only on (seed, task, run): runs can execute in any order and resume."""
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(zlib.crc32(task_name.encode()), run))
    return int(sequence.generate_state(1, dtype=np.uint64)[0])


@dataclass(frozen=True)
class Step:
    """The model's view at one item position.

    probs[i] is p_t(item i) under the distribution the sampler draws from (temperature and filters applied).
    Where a backend sees only a top-k, `tail` is the mass it could not see: each item's true probability
    lies in [probs[i], probs[i] + tail] (and the tail's total is shared), `missing` lists items absent from
    the visible top-k, and `tail_cap` (when known) is the most one unseen token can hold (the smallest visible
    probability), so a missing item gains at most min(tail_cap, tail). An exact backend reports tail 0.
    `sampled` is the index of the item the model produced, or None when it produced something off the set.
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
    tail_cap: float | None = None

    def to_record(self) -> dict:
        return {
            "task": self.task, "run": self.run, "step": self.step, "probs": list(self.probs),
            "on_set_mass": float(sum(self.probs)), "sampled": self.sampled, "text": self.text,
            "final": self.final, "tail": self.tail, "missing": list(self.missing), "flags": list(self.flags),
            "tail_cap": self.tail_cap,
        }

    @classmethod
    def from_record(cls, r: dict) -> "Step":
        return cls(task=r["task"], run=int(r["run"]), step=int(r["step"]), probs=tuple(r["probs"]),
                   sampled=r["sampled"], text=r.get("text", ""), final=bool(r.get("final", False)),
                   tail=float(r.get("tail", 0.0)), missing=tuple(r.get("missing", ())),
                   flags=tuple(r.get("flags", ())), tail_cap=r.get("tail_cap"))


class Backend(Protocol):
    """What a backend offers the core.

    `measure` takes any number of runs and yields their steps as they are measured, in any order across runs
    but in order within a run; the last step of each run has final=True. A backend that runs requests
    concurrently interleaves runs. Randomness comes only from each RunSpec's seed.
    """

    name: str
    model: str
    exact: bool

    def describe(self) -> dict: ...

    def measure(self, runs: Sequence[RunSpec]) -> Iterator[Step]: ...

    def close(self) -> None: ...
