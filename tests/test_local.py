"""The local backend on the real embedded SmolLM2 GGUF (no mocks)."""

import json

import numpy as np
import pytest

from conftest import needs_model, one_line_error, run_cli
from deval.core.protocol import Filters, RunSpec, run_seed
from deval.core.tasks import TaskCatalog
from deval.report.profile import VERDICT_STYLE

pytestmark = [needs_model, pytest.mark.model]
CATALOG = TaskCatalog.load()


@pytest.fixture(scope="module")
def backend():
    from deval.backends.local import LocalBackend
    b = LocalBackend()
    yield b
    b.close()


def spec(task="flat", run=0, steps=4, temperature=1.0, mode=None, filters=Filters(), positions="constrained"):
    """Constrained by default: the first position is then where the answer starts (after the cue)."""
    t = CATALOG.get(task)
    return RunSpec(task=t, run=run, seed=run_seed(0, t.name, run), mode=mode or t.mode, steps=steps,
                   temperature=temperature, filters=filters, positions=positions)


def test_full_distribution_sums_to_one(backend):
    logp = backend.next_logprobs(backend.prompt_tokens(spec().prompt))
    assert logp.shape == (backend.n_vocab,) and logp.dtype == np.float64
    assert np.exp(logp).sum() == pytest.approx(1.0, abs=1e-9)


def test_argmax_is_llama_cpps_greedy_token(backend):
    from deval.backends.local import open_llama
    tokens = backend.prompt_tokens(spec().prompt)
    logp = backend.next_logprobs(tokens)
    other = open_llama(backend.model, n_ctx=512, verbose=False)
    try:
        other.eval(tokens)
        greedy = other.sample(temp=0.0)
    finally:
        other.close()
    assert int(np.argmax(logp)) == greedy


def test_temperature_identity_on_item_probabilities(backend):
    """Step-0 item probabilities at T equal the chain rule over softmax(log p / T) of the T=1 values."""
    one_step = spec(steps=1)
    context = backend.answer_tokens(one_step)
    root = backend.next_logprobs(context)
    space = backend.tokenize(" ")[0]
    after_space = backend.next_logprobs(context + (space,))
    for temperature in (0.5, 1.0, 1.7):
        def soft(logp):
            z = logp / temperature
            return np.exp(z - np.logaddexp.reduce(z))
        q_root, q_space = soft(root), soft(after_space)
        digits = [backend.tokenize(str(d))[0] for d in range(1, 10)]
        expected = np.array([q_root[t] + q_root[space] * q_space[t] for t in digits])
        step = next(iter(backend.measure([RunSpec(**{**one_step.__dict__, 'temperature': temperature})])))
        assert np.max(np.abs(np.array(step.probs) - expected)) < 1e-9


def test_multi_token_item_uses_the_chain_rule(backend):
    task = spec("uniform-10", steps=1)
    context = backend.answer_tokens(task)
    one, zero, space = backend.tokenize("1")[0], backend.tokenize("0")[0], backend.tokenize(" ")[0]
    assert backend.tokenize("10") == [one, zero]  # digits are single tokens in SmolLM2
    q = np.exp(backend.next_logprobs(context))
    q1 = np.exp(backend.next_logprobs(context + (one,)))
    qs = np.exp(backend.next_logprobs(context + (space,)))
    qs1 = np.exp(backend.next_logprobs(context + (space, one)))
    ten = q[one] * q1[zero] + q[space] * qs[one] * qs1[zero]
    single_one = q[one] * (1 - q1[zero]) + q[space] * qs[one] * (1 - qs1[zero])
    step = next(iter(backend.measure([task])))
    # measure() decodes in its own context (deval.backends.local_batch); with flash attention, llama.cpp's default,
    # its KV size moves the last float bits of a row (6e-7 here; bit-identical with --flash-attn off)
    assert step.probs[9] == pytest.approx(ten, abs=1e-6)
    assert step.probs[0] == pytest.approx(single_one, abs=1e-6)
    assert sum(step.probs) <= 1.0 + 1e-12


def test_seeded_runs_are_bit_for_bit_reproducible(backend):
    from deval.backends.local import LocalBackend
    runs = [spec(run=r, steps=5, positions=p) for r in range(2) for p in ("free", "constrained")]
    first = list(backend.measure(runs))
    list(backend.measure([spec("extreme", steps=3)]))  # other work in between must not matter
    again = list(backend.measure(runs[::-1]))
    fresh = LocalBackend()
    try:
        third = list(fresh.measure(runs))
    finally:
        fresh.close()
    key = lambda s: (s.run, s.step, s.flags)
    assert sorted(first, key=key) == sorted(again, key=key) == sorted(third, key=key)


def test_independent_mode_repeats_the_same_distribution(backend):
    steps = list(backend.measure([spec(mode="independent", steps=4)]))
    assert all(s.probs == steps[0].probs for s in steps)


def test_top_k_filter_keeps_only_the_top_token(backend):
    """With top-k 1 the sampler is greedy: item mass is 1 on the argmax item's path, or 0 if it is off-set."""
    plain = next(iter(backend.measure([spec(steps=1)])))
    greedy = next(iter(backend.measure([spec(steps=1, filters=Filters(top_k=1))])))
    assert sorted(greedy.probs)[:-1] == [0.0] * (len(greedy.probs) - 1)
    assert max(greedy.probs) in (0.0, 1.0)
    if max(greedy.probs) == 1.0:
        assert greedy.sampled == int(np.argmax(greedy.probs)) == int(np.argmax(plain.probs))
    else:
        assert greedy.sampled is None


def test_profile_run_files_on_the_real_model(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("profile", "--task", "flat", "--runs", "2", "--steps", "4", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["backend"] == "local" and summary["model"].endswith(".gguf")
    assert summary["verdict"]["type"] in VERDICT_STYLE and summary["verdict"]["reason"]
    assert summary.pop("run_dir") == str(out) and json.loads((out / "summary.json").read_text()) == summary
    records = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    # free mode: a run's answer may end before --steps (flag short-run); every run ends in one final record
    assert len(records) <= 8 and sorted(r["run"] for r in records if r["final"]) == [0, 1]
    assert all(0.0 <= r["on_set_mass"] <= 1.0 + 1e-9 for r in records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"]["n_vocab"] == 49152 and manifest["filter_order"] == "filters-first"


def test_bad_model_files_give_one_line_errors(tmp_path):
    assert "not found" in one_line_error(run_cli("profile", "--model", str(tmp_path / "none.gguf")))
    assert "is a directory" in one_line_error(run_cli("profile", "--model", str(tmp_path)))
    (tmp_path / "junk.gguf").write_bytes(b"not a model at all")
    assert "not a GGUF" in one_line_error(run_cli("profile", "--model", str(tmp_path / "junk.gguf")))
    (tmp_path / "cut.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 32)
    assert "could not load" in one_line_error(run_cli("profile", "--model", str(tmp_path / "cut.gguf")))


def test_local_options_are_checked_and_a_small_context_is_honoured(tmp_path):
    assert "--ctx must be >= 64" in one_line_error(run_cli("profile", "--ctx", "16"))
    assert "--threads must be >= 1" in one_line_error(run_cli("profile", "--threads", "0"))
    line = one_line_error(run_cli("profile", "--task", "flat", "--runs", "1", "--steps", "30", "--ctx", "64",
                                  "--out", str(tmp_path / "r")))
    assert "raise --ctx or lower --steps" in line


def test_missing_llama_cpp_names_the_install_command(tmp_path):
    fake = tmp_path / "llama_cpp"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('no llama', name='llama_cpp')\n")
    line = one_line_error(run_cli("profile", "--runs", "1", env={"PYTHONPATH": str(tmp_path)}))
    assert "pip install 'deval[local]'" in line


def _gpu_build() -> bool:
    try:
        import llama_cpp
        return bool(llama_cpp.llama_supports_gpu_offload())
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_build(), reason="needs llama-cpp-python built with CUDA and a GPU")
def test_full_offload_agrees_with_cpu(backend):
    from deval.backends.local import LocalBackend
    gpu = LocalBackend(gpu_layers=-1)
    cpu = LocalBackend(gpu_layers=0)
    try:
        assert gpu.describe()["gpu_layers"] == -1
        a = list(gpu.measure([spec(steps=3)]))
        b = list(cpu.measure([spec(steps=3)]))
        assert np.max(np.abs(np.array(a[0].probs) - np.array(b[0].probs))) < 0.05  # different kernels, same model
    finally:
        gpu.close()
        cpu.close()


def test_next_logprobs_does_not_depend_on_earlier_calls(backend):
    """llama.cpp's numbers move with batch composition; next_logprobs fixes the schedule, so order is moot."""
    from deval.backends.local import LocalBackend
    prompt = tuple(backend.prompt_tokens("Name one vowel at random."))
    suffixes = [(), tuple(backend.tokenize("a")), tuple(backend.tokenize("e")), tuple(backend.tokenize(" i"))]
    forward = [backend.next_logprobs(prompt + s) for s in suffixes]
    list(backend.measure([spec(steps=2)]))  # a profile run in between reuses the same KV cache
    backward = [backend.next_logprobs(prompt + s) for s in suffixes[::-1]][::-1]
    fresh = LocalBackend()
    try:
        fresh.prompt_tokens("Name one vowel at random.")
        alone = fresh.next_logprobs(prompt + suffixes[2])
    finally:
        fresh.close()
    for a, b in zip(forward, backward):
        assert np.array_equal(a, b)
    assert np.array_equal(alone, forward[2])


def test_constrained_sampler_draws_items_with_their_renormalised_probabilities(backend):
    """Constrained draws follow p_t(item) / on-set mass, from the same distributions (chi-square), never off-set."""
    from scipy import stats
    from deval.backends.local import RunState, end_paths
    s = spec("uniform-10", steps=1)
    trie = backend.item_trie(s.task.matcher)
    context = backend.answer_tokens(s)
    state = RunState()
    rows = backend._complete(backend._evaluate(state, context, trie.lookahead()))
    probs, dists, _ = backend._complete(backend._item_distribution(state, context, trie, s, rows))
    paths = end_paths(trie, dists)
    masses = np.array([m for _, _, m in paths])
    rng = np.random.default_rng(0)
    n = 20000
    counts = np.zeros(len(probs) + 1)
    for u in rng.random(n):
        item = paths[min(int(np.searchsorted(np.cumsum(masses), u * masses.sum(), side="right")), len(paths) - 1)][1]
        counts[-1 if item is None else item] += 1
    assert counts[-1] == 0
    expected = np.append(probs / probs.sum(), 0.0) * n
    big = expected > 5
    observed = np.append(counts[big], counts[~big].sum())
    wanted = np.append(expected[big], expected[~big].sum())
    keep = wanted > 0
    assert stats.chisquare(observed[keep], wanted[keep] * observed.sum() / wanted[keep].sum()).pvalue > 1e-3


def test_threads_set_the_batch_threads_too_and_waits_spin_briefly():
    from deval.backends.local import LocalBackend

    local = LocalBackend(threads=1, ctx=256)
    try:
        params = local.llm.context_params
        assert (params.n_threads, params.n_threads_batch) == (1, 1)
    finally:
        local.close()
    import os
    import subprocess
    import sys

    code = ("import deval.backends.local, os; "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def wait(**chosen) -> str:
        return subprocess.run([sys.executable, "-c", code], env={**env, **chosen}, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert wait() == "1000 None"  # a short spin, then sleep: llama.cpp's threads yield to other jobs
    assert wait(OMP_WAIT_POLICY="ACTIVE") == "None ACTIVE"  # the user's choice wins
    assert wait(GOMP_SPINCOUNT="50") == "50 None"


def test_flash_attention_follows_llama_cpp_unless_turned_off():
    """On by default as llama.cpp's 'auto' (llama-server's default), so both give the same rows; --flash-attn off."""
    import llama_cpp

    from deval.backends.local import LocalBackend

    rows = {}
    for choice in (None, "off"):
        local = LocalBackend(threads=1, ctx=256, flash_attn=choice)
        try:
            fa = local.llm.context_params.flash_attn_type
            assert fa == (llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED if choice else llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED)
            assert local.describe()["flash_attn"] is (choice is None)
            rows[choice] = np.exp(local.next_logprobs(local.answer_tokens(spec("extreme", steps=1))))
        finally:
            local.close()
    assert 1e-6 < np.max(np.abs(rows[None] - rows["off"])) < 0.1  # a real, small difference in the numbers
    assert "--flash-attn must be on or off" in one_line_error(run_cli("profile", "--flash-attn", "auto"))


def test_a_prefix_has_one_row_in_a_run_the_row_its_token_was_drawn_from(backend):
    """A position is measured with the row its token was drawn from: the measure asks the generation's prefixes
    again, and gets the same row, not the row of another decode (llama.cpp's rows move with the batches)."""
    rows, asked = {}, {}
    evaluate = backend._evaluate

    def recording(state, tokens, lookahead=()):
        got = yield from evaluate(state, tokens, lookahead)
        for i, row in enumerate(got):
            key = tokens + lookahead[:i]
            assert np.array_equal(rows.setdefault(key, row.copy()), row)
            asked[key] = asked.get(key, 0) + 1
        return got

    backend._evaluate = recording
    try:
        task = TaskCatalog.load().get("flat")
        steps = list(backend._drive(backend._run(RunSpec(task=task, run=1, seed=run_seed(0, task.name, 1),
                                                         mode="sequence", steps=3))))
    finally:
        del backend._evaluate
    assert len(steps) == 3 and any(s.sampled is not None for s in steps)
    assert max(asked.values()) > 1  # positions were measured at prefixes the generation had drawn at
