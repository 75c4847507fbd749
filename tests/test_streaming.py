"""Streaming summaries: what a profile keeps as its steps stream past equals the batch computation over all of them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deval.core import metrics, references
from deval.core.protocol import Step
from deval.core.summary import StepCollector, TaskArrays, summarise_task
from deval.core.tasks import Task
from deval.jsonio import dump_line, dumps
from deval.runs.store import RecordLog, RunDir


def batch_arrays(task: Task, steps: list[Step]) -> TaskArrays:
    """The padded arrays built from a list of every step at once (how the summary was computed before streaming)."""
    k = len(task.items)
    runs = sorted({s.run for s in steps})
    index = {r: i for i, r in enumerate(runs)}
    t_max = max((s.step for s in steps), default=-1) + 1
    probs = np.full((len(runs), t_max, k), np.nan)
    sampled = np.full((len(runs), t_max), metrics.PAD, dtype=int)
    tail, tail_cap = np.zeros((len(runs), t_max)), np.zeros((len(runs), t_max))
    missing = np.zeros((len(runs), t_max, k), dtype=bool)
    flags: set[str] = set()
    for s in steps:
        i = index[s.run]
        probs[i, s.step] = s.probs
        sampled[i, s.step] = metrics.INVALID if s.sampled is None else s.sampled
        tail[i, s.step] = s.tail
        missing[i, s.step, list(s.missing)] = True
        tail_cap[i, s.step] = s.tail if s.tail_cap is None else s.tail_cap
        flags.update(s.flags)
    return TaskArrays(probs=probs, sampled=sampled, tail=tail, flags=tuple(sorted(flags)), missing=missing,
                      tail_cap=tail_cap)


def random_steps(task: Task, rng: np.random.Generator) -> list[Step]:
    """Ragged runs with gaps in their numbers, off-set draws, top-k tails and flags, interleaved across runs."""
    k = len(task.items)
    per_run = []
    for run in rng.choice(40, size=int(rng.integers(1, 7)), replace=False):
        run_steps = []
        n = int(rng.integers(1, 25))
        for t in range(n):
            p = rng.dirichlet(np.ones(k + 1))
            tail = float(p[-1]) if rng.random() < 0.5 else 0.0
            sampled = None if rng.random() < 0.2 else int(rng.integers(k))
            run_steps.append(Step(
                task=task.name, run=int(run), step=t, probs=tuple(float(x) for x in p[:k]), sampled=sampled,
                text=task.items[sampled] if sampled is not None else "<other>", final=t == n - 1, tail=tail,
                missing=tuple(int(i) for i in np.flatnonzero(rng.random(k) < 0.2)),
                flags=("preamble",) if rng.random() < 0.1 else (),
                tail_cap=None if rng.random() < 0.5 else tail / 2))
        per_run.append(run_steps)
    order = rng.permutation([i for i, r in enumerate(per_run) for _ in r])  # runs interleave, in order within each
    cursors = [0] * len(per_run)
    out = []
    for i in order:
        out.append(per_run[i][cursors[i]])
        cursors[i] += 1
    return out


TASK = Task(name="abc", description="", items=("a", "b", "c", "d"), weights=(0.4, 0.3, 0.2, 0.1), prompt="",
            single_prompt="")


@pytest.mark.parametrize("seed", range(20))
def test_collector_equals_the_batch_arrays_on_random_steps(seed):
    steps = random_steps(TASK, np.random.default_rng(seed))
    collector = StepCollector(TASK)
    for s in steps:  # one at a time, as they stream from a backend or a file
        collector.add(s)
    got, want = collector.arrays(), batch_arrays(TASK, steps)
    for name in ("probs", "sampled", "tail", "missing", "tail_cap"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.flags == want.flags and len(collector) == len(steps)


def batch_runs_identical(steps: list[Step]) -> bool:
    """Whether every run sampled the same texts in step order, from a list of every step."""
    runs: dict[int, list[tuple[int, str]]] = {}
    for s in steps:
        runs.setdefault(s.run, []).append((s.step, s.text))
    return len({tuple(t for _, t in sorted(v)) for v in runs.values()}) <= 1


@pytest.mark.parametrize("seed", range(30))
def test_runs_identical_streamed_equals_the_batch_answer(seed):
    rng = np.random.default_rng(seed)
    texts = [str(x) for x in rng.choice(["a", "b", "c", "<other>"], size=int(rng.integers(1, 6)))]
    runs = {r: list(texts) for r in range(int(rng.integers(1, 5)))}
    change = rng.integers(3)  # 0: all alike, 1: one text differs, 2: one run shorter
    if change == 1 and len(runs) > 1:
        runs[1][int(rng.integers(len(texts)))] = "d"
    if change == 2 and len(runs) > 1 and len(texts) > 1:
        runs[1] = runs[1][:-1]
    steps = [Step(task="abc", run=r, step=t, probs=(0.25,) * 4, sampled=None, text=x)
             for r, xs in runs.items() for t, x in enumerate(xs)]
    steps = [steps[i] for i in rng.permutation(len(steps))]  # any arrival order
    assert StepCollector.of(TASK, steps).runs_identical() == batch_runs_identical(steps)


@pytest.mark.parametrize("seed", range(5))
def test_summary_from_a_stream_equals_the_summary_from_a_list(seed):
    steps = random_steps(TASK, np.random.default_rng(100 + seed))
    streamed = summarise_task(TASK, StepCollector.of(TASK, iter(steps)), seed=seed)
    listed = summarise_task(TASK, list(steps), seed=seed)
    assert dumps(streamed) == dumps(listed)
    identical_runs = [Step(task="abc", run=r, step=t, probs=(0.4, 0.3, 0.2, 0.1), sampled=t % 4,
                           text="abcd"[t % 4], final=t == 2) for r in range(3) for t in range(3)]
    assert summarise_task(TASK, identical_runs, seed=0)["runs_identical"]
    assert not streamed["runs_identical"] or len({s.run for s in steps}) == 1


def test_null_references_in_chunks_equal_one_draw(monkeypatch):
    steps_per_run = np.array([50, 37, 50, 12])
    whole = references.null_references(TASK.p_task, 4, steps_per_run, seed=3)
    monkeypatch.setattr(references, "CHUNK_ELEMENTS", 150)  # 1 simulated profile per chunk
    assert json.dumps(references.null_references(TASK.p_task, 4, steps_per_run, seed=3)) == json.dumps(whole)


def test_record_lines_equal_the_cleaned_dump():
    plain = Step(task="abc", run=0, step=1, probs=(0.5, 0.25, 0.25, 0.0), sampled=None, text="x").to_record()
    awkward = {**plain, "tail": float("nan"), "tail_cap": np.float32(0.5), "run": np.int64(3),
               "probs": [np.float64(0.5), float("inf")]}
    for record in (plain, awkward):
        line = dump_line(record)
        assert line == dumps(record, indent=None) and json.loads(line)
    assert json.loads(dump_line(awkward))["tail"] is None and json.loads(dump_line(awkward))["run"] == 3


def test_a_run_directory_streams_its_finished_runs(tmp_path):
    steps = random_steps(TASK, np.random.default_rng(7))
    rd = RunDir.create(tmp_path / "r", {"schema": "deval.manifest/1", "config": {}})
    partial = Step(task="abc", run=99, step=0, probs=(0.25,) * 4, sampled=0, text="a")  # a run cut short
    for s in steps + [partial]:
        rd.append(s)
    rd.close()
    with (tmp_path / "r" / "steps.jsonl").open("a") as f:
        f.write('{"task": "abc", "ru')  # torn by a crash mid-write
    assert RecordLog(tmp_path / "r" / "steps.jsonl").read(repair=False)[-1]["run"] == 99
    assert rd.completed_runs() == {(s.task, s.run) for s in steps}
    kept = RecordLog(tmp_path / "r" / "steps.jsonl").read(repair=False)
    assert kept == [s.to_record() for s in steps]  # partial run and torn line cut off the file
    assert list(rd.iter_completed_steps()) == steps
    first = min(s.run for s in steps)
    assert rd.first_run_steps() == [s for s in steps if s.run == first]
