"""A scripted backend for tests and demos: deterministic under the seed, it records the runs it received.

The mock's vocabulary is the task's items plus one 'other' token for everything off the set; temperature and
filters act on it exactly as on a real vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from deval.core.protocol import GenerateSpec, RunSpec, Step, cut_at_stop
from deval.errors import ConfigError
from deval.core.sampling import draw, sampling_logprobs

MODELS = {
    "d": "each step nearly one-hot on a planned item; the plan's counts follow P_task",
    "e": "P_token close to P_task with small noise at every step (no feedback from earlier items)",
    "uniform": "close to uniform over the items at every step, ignoring P_task",
    "off-format": "most of the mass off the items: the model does not follow the task format",
    "quota": "P_token leans toward the items still owed by P_task given what it already wrote (feedback)",
}
OTHER_MASS = {"d": 0.002, "e": 0.02, "uniform": 0.02, "off-format": 0.9, "quota": 0.02}
WORDS = ("alpha", "beta", "gamma", "delta", "return", "pass", "x", "y", "1", "+", "\n")
CONCENTRATION = 400.0  # Dirichlet concentration of the per-step noise around each model's mean
QUOTA_GAIN = 1.0  # how strongly the quota model compensates (P_task + gain * residual quota)


class MockBackend:
    """Speaks the backend protocol without a model."""

    name = "mock"
    exact = True
    OPTIONS = ("script",)

    def __init__(self, model: str | None = None, script: Mapping[str, Sequence[str]] | str | Path | None = None):
        if model not in MODELS:
            raise ConfigError(f"unknown mock model '{model}'; choose one of {', '.join(MODELS)} with --model")
        self.model = model
        self.calls: list[RunSpec] = []
        self.generated: list[GenerateSpec] = []
        self.script = _load_script(script)

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model, "exact": True, "about": MODELS[self.model]}

    def measure(self, runs: Sequence[RunSpec]) -> Iterator[Step]:
        for spec in runs:
            self.calls.append(spec)
            yield from self._run(spec)

    def generate(self, specs: Sequence[GenerateSpec]) -> Iterator[tuple[int, str]]:
        """Scripted text: a prompt in the script gets one of its texts (the first at temperature <= 0.05, else one
        drawn with the spec's seed); any other prompt gets seeded filler words. Stop strings apply; max_tokens
        counts characters here."""
        for index, spec in enumerate(specs):
            self.generated.append(spec)
            rng = np.random.default_rng(spec.seed)
            texts = self.script.get(spec.prompt)
            if texts:
                text = texts[0] if spec.temperature <= 0.05 else texts[int(rng.integers(len(texts)))]
            else:
                text = " ".join(WORDS[int(i)] for i in rng.integers(len(WORDS), size=8))
            yield index, cut_at_stop(text, spec.stop)[0][: spec.max_tokens]

    def close(self) -> None:
        pass

    def _run(self, spec: RunSpec) -> Iterator[Step]:
        rng = np.random.default_rng(spec.seed)
        p_task = spec.task.p_task
        k = len(p_task)
        plan = _plan(p_task, spec.steps, rng) if self.model == "d" else None
        seen = np.zeros(k)
        for t in range(spec.steps):
            on_set = self._item_probs(p_task, plan[t] if plan is not None else None, rng, seen if t else None)
            other = _other_mass(self.model, rng)
            vocab = np.append(on_set * (1.0 - other), other)
            with np.errstate(divide="ignore"):
                logp1 = np.log(vocab)
                logp = sampling_logprobs(logp1, spec.temperature, spec.filters)
            if spec.positions == "constrained":  # the draw is restricted to the items, renormalised
                choice = draw(logp[:k], rng) if np.isfinite(logp[:k]).any() else k
            else:
                choice = draw(logp, rng)
            sampled = choice if choice < k else None
            if sampled is not None and spec.mode == "sequence":
                seen[sampled] += 1
            yield Step(task=spec.task.name, run=spec.run, step=t, probs=tuple(np.exp(logp[:k]).tolist()),
                       sampled=sampled, text=spec.task.items[choice] if sampled is not None else "<other>",
                       final=t == spec.steps - 1, item_logprobs=tuple((float(v),) for v in logp1[:k]))

    def _item_probs(self, p_task: np.ndarray, planned: int | None, rng: np.random.Generator,
                    seen: np.ndarray | None) -> np.ndarray:
        k = len(p_task)
        if self.model == "d":
            p = np.full(k, 0.03 / max(k - 1, 1))
            p[planned] = 0.97 if k > 1 else 1.0
            mean = p / p.sum()
        elif self.model == "uniform":
            mean = np.full(k, 1.0 / k)
        elif self.model == "quota" and seen is not None and seen.sum() > 0:
            mean = np.clip(p_task + QUOTA_GAIN * (p_task - seen / seen.sum()), 1e-3, None)
            mean = mean / mean.sum()
        else:  # e, off-format (aligned, but little mass on the set), quota at its first step
            mean = p_task
        return rng.dirichlet(CONCENTRATION * mean + 1e-3)


def _load_script(script) -> dict[str, tuple[str, ...]]:
    """prompt -> canned texts, from a mapping or a JSON file holding one (a single string counts as one text)."""
    if script is None:
        return {}
    if isinstance(script, (str, Path)):
        try:
            script = json.loads(Path(script).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the mock script {script} ({exc}); pass a JSON object prompt -> texts")
    if not isinstance(script, Mapping):
        raise ConfigError("the mock script must map each prompt to a list of texts")
    return {str(k): (v,) if isinstance(v, str) else tuple(str(x) for x in v) for k, v in script.items()}


def _plan(p_task: np.ndarray, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Items for each step whose counts follow P_task (largest remainder), in random order."""
    exact = p_task * steps
    counts = np.floor(exact).astype(int)
    remainder = steps - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    plan = np.repeat(np.arange(len(p_task)), counts)
    rng.shuffle(plan)
    return plan


def batch_probs(model: str, p_task: np.ndarray, runs: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """Item probabilities [runs, steps, K] of the memoryless mock models, vectorised (interval coverage tests)."""
    if model not in ("d", "e", "uniform", "off-format"):
        raise ConfigError(f"batch_probs covers the memoryless mock models, not '{model}'")
    k = len(p_task)
    if model == "d":
        plans = np.stack([_plan(p_task, steps, rng) for _ in range(runs)])
        mean = np.full((runs, steps, k), 0.03 / max(k - 1, 1))
        np.put_along_axis(mean, plans[..., None], 0.97, axis=-1)
        mean /= mean.sum(axis=-1, keepdims=True)
    else:
        mean = np.broadcast_to(np.full(k, 1.0 / k) if model == "uniform" else p_task, (runs, steps, k))
    gamma = rng.standard_gamma(CONCENTRATION * mean + 1e-3)  # a Dirichlet draw per step
    other = rng.beta(CONCENTRATION * OTHER_MASS[model], CONCENTRATION * (1 - OTHER_MASS[model]), (runs, steps, 1))
    return gamma / gamma.sum(axis=-1, keepdims=True) * (1.0 - other)


def _other_mass(model: str, rng: np.random.Generator) -> float:
    """The step's mass off the items: around the model's OTHER_MASS, with the same concentration as the items."""
    m = OTHER_MASS[model]
    return float(rng.beta(CONCENTRATION * m, CONCENTRATION * (1 - m)))
