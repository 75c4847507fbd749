"""Per-step export of a profile run (`deval report RUN --steps csv|json`): one row per item position."""

from __future__ import annotations

import csv
import io

import numpy as np

from deval.core import metrics
from deval.core.protocol import Step
from deval.core.tasks import Task
from deval.jsonio import dumps

FORMATS = ("csv", "json")


def step_rows(tasks: dict[str, Task], steps: list[Step], min_mass: float, positions: str) -> list[dict]:
    """task, run, step, text, sampled item, on-set mass, format failure, TV_t and e_t, then p_t and P_token per item."""
    rows = []
    for s in sorted(steps, key=lambda s: (s.task, s.run, s.step)):
        task = tasks[s.task]
        probs = np.asarray(s.probs, dtype=float)
        mass = float(probs.sum())
        failed = positions == "free" and not mass >= min_mass
        ptok = metrics.p_token(probs)
        row = {"task": s.task, "run": s.run, "step": s.step, "text": s.text,
               "sampled": None if s.sampled is None else task.items[s.sampled], "on_set_mass": mass,
               "format_failure": failed, "tv": None if failed or np.isnan(ptok).any() else float(metrics.tv(ptok, task.p_task)),
               "e": None if failed or np.isnan(ptok).any() else float(ptok.max()), "flags": " ".join(s.flags)}
        row |= {f"p[{x}]": float(p) for x, p in zip(task.items, probs)}
        row |= {f"P_token[{x}]": None if np.isnan(p) else float(p) for x, p in zip(task.items, ptok)}
        rows.append(row)
    return rows


def render_steps(rows: list[dict], fmt: str) -> str:
    """The rows as CSV (columns of the first task's rows, then any new ones) or a JSON list."""
    if fmt == "json":
        return dumps(rows)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()
