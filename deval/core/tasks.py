"""Task definitions: a target distribution P_task over items, loaded and validated from TOML files."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from deval.core.answers import DEFAULT_CUE, DEFAULT_STRIP, Matcher, Matching
from deval.core.datafiles import data_dir, field_checker, nonempty_string, read_toml
from deval.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

MODES = ("sequence", "independent")
WEIGHT_TOLERANCE = 1e-6
PLACEHOLDERS = ("items", "distribution", "steps")


@dataclass(frozen=True)
class Task:
    """A target distribution over items and the prompt that asks a model to sample from it."""

    name: str
    description: str
    items: tuple[str, ...]
    weights: tuple[float, ...]
    prompt: str
    single_prompt: str
    mode: str = "sequence"
    steps: int = 30
    separator: str = ","
    source: str = ""
    cue: str = DEFAULT_CUE  # where the answer starts: prefilled after the chat template, or ends a base model's prompt
    matching: Matching = Matching()

    @property
    def p_task(self) -> np.ndarray:
        import numpy as np  # here: 'deval tasks' and --help load no numpy

        return np.asarray(self.weights, dtype=float)

    @property
    def matcher(self) -> Matcher:
        return Matcher(self.items, self.separator, self.matching)

    def render_prompt(self, mode: str, steps: int) -> str:
        """The prompt for one run: a sequence of `steps` items, or one item in independent mode."""
        template = self.prompt if mode == "sequence" else self.single_prompt
        return template.format(
            items=", ".join(self.items),
            distribution=", ".join(f"{x}: {w:.0%}" if w * 100 == round(w * 100) else f"{x}: {w:.3g}"
                                   for x, w in zip(self.items, self.weights)),
            steps=steps,
        )

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "items": list(self.items),
            "weights": list(self.weights), "prompt": self.prompt, "single_prompt": self.single_prompt,
            "mode": self.mode, "steps": self.steps, "separator": self.separator, "source": self.source,
            "cue": self.cue, "match_case": self.matching.case, "strip": self.matching.strip,
        }


def builtin_tasks_dir() -> Path:
    """The shipped tasks: inside the installed wheel, or at the top of a source checkout."""
    return data_dir("tasks")


def task_from_dict(data: dict, source: str) -> Task:
    """Validate one task's fields; every error names the file, the field and the fix."""

    known = {"name", "description", "items", "weights", "prompt", "single_prompt", "mode", "steps", "separator",
             "cue", "match_case", "strip"}
    fail = field_checker(data, source, known, ("name", "items", "weights", "prompt"))
    name = nonempty_string(data, "name", fail)
    items = data["items"]
    if not isinstance(items, list) or len(items) < 2:
        raise fail("items", "must be a non-empty list of at least two strings")
    if not all(isinstance(x, str) and x.strip() for x in items):
        raise fail("items", "every item must be a non-empty string")
    items = [x.strip() for x in items]
    if len(set(items)) != len(items):
        raise fail("items", "items must be distinct")
    weights = data["weights"]
    if not isinstance(weights, list) or len(weights) != len(items):
        raise fail("weights", f"must be a list of {len(items)} numbers, one per item")
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights):
        raise fail("weights", "every weight must be a number")
    bad = next((w for w in weights if not math.isfinite(w)), None)
    if bad is not None:
        raise fail("weights", f"every weight must be a finite number (got {bad}); give numbers that sum to 1")
    if any(w < 0 for w in weights):
        raise fail("weights", "weights must be >= 0")
    total = float(sum(weights))
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        raise fail("weights", f"must sum to 1 (they sum to {total:.6g})")
    mode = data.get("mode", "sequence")
    if mode not in MODES:
        raise fail("mode", f"must be one of {', '.join(MODES)}")
    steps = data.get("steps", 30)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise fail("steps", "must be an integer >= 1")
    separator = data.get("separator", ",")
    if not isinstance(separator, str) or not separator.strip():
        raise fail("separator", "must be a non-blank string such as ','")
    clash = next((x for x in items if separator.strip() in x), None)
    if clash is not None:
        raise fail("items", f"item {clash!r} contains the separator {separator!r}, so its runs cannot be split; "
                            "remove it from the item or set another 'separator'")
    cue = data.get("cue", DEFAULT_CUE)
    if not isinstance(cue, str):
        raise fail("cue", "must be a string such as 'Answer:' (empty for no cue)")
    case = data.get("match_case", False)
    if not isinstance(case, bool):
        raise fail("match_case", "must be true or false")
    strip = data.get("strip", DEFAULT_STRIP)
    if not isinstance(strip, str) or any(ch.isalnum() for ch in strip):
        raise fail("strip", "must be a string of punctuation characters such as '.!?'")
    if len(Matcher(tuple(items), separator, Matching(case, strip)).keys) != len(items):
        raise fail("items", "two items are the same under the matching rule (case, stripped punctuation); set "
                            "match_case = true or make them distinct")
    prompt = _check_template(data["prompt"], "prompt", fail)
    single = data.get("single_prompt",
                      "Pick one item from {items} at random with these probabilities: {distribution}. "
                      "Answer with the item only.")
    single = _check_template(single, "single_prompt", fail)
    return Task(name=name.strip(), description=str(data.get("description", "")), items=tuple(items),
                weights=tuple(float(w) for w in weights), prompt=prompt, single_prompt=single, mode=mode,
                steps=steps, separator=separator, source=source, cue=cue.strip(),
                matching=Matching(case=case, strip=strip))


def _check_template(template, fieldname: str, fail) -> str:
    if not isinstance(template, str) or not template.strip():
        raise fail(fieldname, "must be a non-empty string")
    try:
        template.format(**{p: "" for p in PLACEHOLDERS})
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise fail(fieldname, f"bad placeholder {exc}; use only {{items}}, {{distribution}}, {{steps}}") from None
    return template


def load_task_file(path: Path) -> Task:
    return task_from_dict(read_toml(path, "task"), str(path))


@dataclass
class TaskCatalog:
    """Every task found in the shipped directory and any user directories, by name."""

    tasks: dict[str, Task] = field(default_factory=dict)

    @classmethod
    def load(cls, extra_dirs: list[Path] | None = None) -> "TaskCatalog":
        catalog = cls()
        for directory in [builtin_tasks_dir(), *(extra_dirs or [])]:
            if not directory.is_dir():
                raise ConfigError(f"tasks directory {directory} not found; pass an existing directory to --tasks-dir")
            for path in sorted(directory.glob("*.toml")):
                task = load_task_file(path)
                if task.name in catalog.tasks:
                    raise ConfigError(f"two tasks are named '{task.name}': {catalog.tasks[task.name].source} and "
                                      f"{path}; rename one (field 'name')")
                catalog.tasks[task.name] = task
        return catalog

    def get(self, ref: str) -> Task:
        """A task by name, or by path to a TOML file."""
        if ref.endswith(".toml"):
            return load_task_file(Path(ref))
        if ref not in self.tasks:
            if (builtin_tasks_dir() / "valid" / f"{ref}.toml").is_file():
                raise ConfigError(f"'{ref}' is a valid-set task (for 'deval calibration' and 'deval diversity'); "
                                  f"profile and sweep need a task with weights: run 'deval tasks' to list them")
            raise ConfigError(f"unknown task '{ref}'; run 'deval tasks' to list them, or pass a .toml path")
        return self.tasks[ref]
