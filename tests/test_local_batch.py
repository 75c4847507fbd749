"""Batched runs on the real embedded SmolLM2: the same bits as one run at a time (issue 17)."""

import numpy as np
import pytest

from conftest import needs_model, run_json
from deval.core.protocol import RunSpec, run_seed
from deval.core.tasks import TaskCatalog

pytestmark = [needs_model, pytest.mark.model]
CATALOG = TaskCatalog.load()


@pytest.fixture(scope="module")
def backend():
    from deval.backends.local import LocalBackend
    b = LocalBackend(threads=2)
    yield b
    b.close()


def specs(positions: str, runs: int = 3, steps: int = 4, tasks=("extreme", "uniform-10")) -> list[RunSpec]:
    return [RunSpec(task=CATALOG.get(t), run=r, seed=run_seed(0, t, r), mode="sequence", steps=steps,
                    positions=positions) for t in tasks for r in range(runs)]


def one_at_a_time(backend, runs: list[RunSpec]) -> dict:
    """Each run alone on the main context, from an empty cache (the schedule before batching)."""
    return {(s.task, s.run, s.step): s.to_record() for spec in runs for s in backend._drive(backend._run(spec))}


@pytest.mark.parametrize("positions,batch", [("free", 4), ("constrained", 4), ("constrained", 1)])
def test_batched_runs_give_the_bits_of_one_run_at_a_time(backend, positions, batch):
    """Every step record (probabilities, draws, texts, flags) equal bit for bit, whatever the batch; uniform-10 has
    two-token items ('10'), so runs bring chunks of unequal length to the same batch."""
    runs = specs(positions)
    evals = backend.evals
    alone = one_at_a_time(backend, runs)
    alone_decodes = backend.evals - evals
    backend.batch, evals = batch, backend.evals
    try:
        batched = [s for s in backend.measure(runs)]
    finally:
        backend.batch = None
    assert {(s.task, s.run, s.step): s.to_record() for s in batched} == alone
    for spec in runs:  # in order within a run, the last one final
        mine = [s for s in batched if (s.task, s.run) == (spec.task.name, spec.run)]
        assert [s.step for s in mine] == sorted(s.step for s in mine) and mine[-1].final
    assert backend.evals - evals < alone_decodes  # the prompt once per task; with batch > 1, runs share decodes


def test_the_prompt_copied_to_a_run_gives_the_rows_of_decoding_it_again(backend):
    """The pool decodes the prompt once in sequence 0 and copies its KV cache (llama_memory_seq_cp): the rows after the
    copy, and after a continuation decoded on the copy, are the bits of decoding everything on a fresh cache."""
    from deval.backends.local import Decode
    from deval.backends.local_batch import SeqPool

    spec = specs("constrained", runs=1)[0]
    prompt = list(backend.answer_tokens(spec))
    more = backend.tokenize(" 1, 2,")
    fresh_prompt = backend._decode(0, prompt, len(prompt) - 1)
    fresh_more = backend._decode(len(prompt), more, 0)
    pool = SeqPool(backend, seqs=3, per_seq=512)
    try:
        for seq in (1, 3):
            rows = pool.start(seq, Decode(0, prompt, len(prompt) - 1))
            assert np.array_equal(rows[0], fresh_prompt[0])
        [a, b] = pool.decode([(1, Decode(len(prompt), more, 0)), (3, Decode(len(prompt), more, 0))])
        for got in (a, b):
            assert all(np.array_equal(x, y) for x, y in zip(got, fresh_more)) and len(got) == len(more)
    finally:
        pool.close()


def test_batch_option_changes_no_number(tmp_path):
    """`deval profile --batch 1` and `--batch 4` on the embedded model: the same summary."""
    args = ["profile", "--task", "extreme", "--runs", "4", "--steps", "4", "--json", "--threads", "2"]
    one = run_json(*args, "--batch", "1", "--out", str(tmp_path / "one"))
    four = run_json(*args, "--batch", "4", "--out", str(tmp_path / "four"))
    assert one["tasks"] == four["tasks"] and one["verdict"] == four["verdict"]


def test_batched_generation_gives_the_texts_of_one_at_a_time(backend):
    """deval code / recommend's free text: generated together (the prompt copied, one decode for every spec's next
    token), each text is the one the spec gives alone on the main context."""
    from deval.backends.local_generate import _sample, end_tokens, prompt_for
    from deval.core.protocol import GenerateSpec

    specs = [GenerateSpec(prompt=p, max_tokens=12, temperature=t, seed=s, stop=("\n\n",))
             for p in ("Name a fruit.", "Write a haiku about rain.") for s, t in ((1, 1.0), (2, 1.0), (3, 0.7))]

    def alone(index, spec):
        return next(backend._drive(_sample(backend, index, spec, prompt_for(backend, spec), end_tokens(backend))))

    expected = dict(alone(i, s) for i, s in enumerate(specs))
    backend.batch = 4
    try:
        got = list(backend.generate(specs))
    finally:
        backend.batch = None
    assert dict(got) == expected and sorted(i for i, _ in got) == list(range(len(specs)))
    assert len(set(expected.values())) > 2  # the seeds and prompts do give different texts


def test_code_batch_option_changes_no_sample(tmp_path):
    """`deval code --batch 1` and `--batch 3` on the embedded model write the same completions."""
    import json

    texts = {}
    for batch in ("1", "3"):
        out = tmp_path / f"b{batch}"
        run_json("code", "--problems", "0", "--samples", "3", "--max-tokens", "24", "--threads", "2",
                 "--batch", batch, "--out", str(out))
        records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        texts[batch] = {(r["task_id"], r["sample"]): r["completion"] for r in records}
    assert texts["1"] == texts["3"] and len(texts["1"]) == 3
