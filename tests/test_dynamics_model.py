"""Sweep, calibration and diversity on the real embedded SmolLM2 (marked model; a few seconds each)."""

import dataclasses

import numpy as np
import pytest

from conftest import needs_model, run_cli
from deval.core.protocol import RunSpec, run_seed
from deval.analyses.calibration import calibrate, rule_grid
from deval.analyses.diversity import diversity
from deval.analyses.calibration import Rule
from deval.analyses.profile import ProfileConfig
from deval.runs.store import RunDir
from deval.analyses.sweep import SweepConfig, run_sweep, temperature_dir, trie_item_probs
from deval.core.tasks import TaskCatalog
from deval.core.validsets import get_valid_set

pytestmark = [needs_model, pytest.mark.model]


@pytest.fixture(scope="module")
def backend():
    from deval.backends.local import LocalBackend
    b = LocalBackend()
    yield b
    b.close()


def test_item_logprobs_reproduce_the_measured_item_probabilities(backend):
    task = TaskCatalog.load().get("colors")  # "red" and " red" are one token each in SmolLM2's vocabulary
    spec = RunSpec(task=task, run=0, seed=run_seed(0, task.name, 0), mode=task.mode, steps=2)
    for step in backend.measure([spec]):
        assert step.item_logprobs is not None
        np.testing.assert_allclose([np.exp(lp).sum() for lp in step.item_logprobs], step.probs, rtol=1e-9)
    from deval.backends.local import item_logprobs
    items = TaskCatalog.load().get("extreme").items  # " 2" is " " then "2": not derivable from one-token log-probs
    assert item_logprobs(backend.item_trie(TaskCatalog.load().get("extreme").matcher), np.zeros(backend.n_vocab), len(items)) is None


def test_sweep_end_to_end(backend, tmp_path):
    tasks = (TaskCatalog.load().get("colors"),)
    base = ProfileConfig(backend="local", model=backend.model, tasks=tasks, runs=2, steps=2)
    # the default minimum on-set mass: the derived numbers leave out the same format failures as the measured ones
    # (SmolLM2's colours positions may all be failures: then both are nan)
    strict = run_sweep(SweepConfig(base, (1.0,)), backend, tmp_path / "strict")["tasks"]["colors"]["rows"][0]
    for key in ("e_score", "atvd", "entropy", "on_set_mass"):
        assert strict["derived"][key]["mean"] == pytest.approx(strict["measured"][key]["mean"], abs=1e-9,
                                                               nan_ok=True), key
    config = SweepConfig(dataclasses.replace(base, min_mass=0.0), (0.5, 1.0, 2.0))  # every position counted
    summary = run_sweep(config, backend, tmp_path / "sweep")
    rows = summary["tasks"]["colors"]["rows"]
    assert [r["temperature"] for r in rows] == [0.5, 1.0, 2.0]
    # at T=1 the derived numbers re-read the very steps that were measured
    t1 = rows[1]
    assert t1["derived"]["e_score"]["mean"] == pytest.approx(t1["measured"]["e_score"]["mean"], abs=1e-9)
    assert t1["derived"]["atvd"]["mean"] == pytest.approx(t1["measured"]["atvd"]["mean"], abs=1e-9)
    derived_e = [r["derived"]["e_score"]["mean"] for r in rows]
    assert derived_e[0] >= derived_e[1] >= derived_e[2]  # along one path, max P_token can only fall with T
    proc = run_cli("report", str(tmp_path / "sweep"))
    assert proc.returncode == 0 and "temperature sweep" in proc.stdout


def test_sweep_derives_multi_token_items_exactly_on_the_real_model(backend, tmp_path):
    """flat's " 7" is " " then "7" in SmolLM2: step 0 (same context at every T) re-tempered from the T=1 trie record
    equals what each temperature's run measured, item by item and in every derived summary number.

    Constrained positions: step 0 is at the answer's start at every T (free positions follow each T's own text)."""
    task = TaskCatalog.load().get("flat")
    assert len(backend.tokenize(" 7")) == 2
    temps = (0.5, 1.0, 2.0)
    config = SweepConfig(ProfileConfig(backend="local", model=backend.model, tasks=(task,), runs=1, steps=1,
                                       positions="constrained"), temps)
    summary = run_sweep(config, backend, tmp_path)
    record = RunDir(tmp_path / "T1").steps()[0].trie_logprobs
    assert record is not None and len(record.nodes) >= 2  # the root and at least the " " node
    for t in temps:
        measured = RunDir(tmp_path / temperature_dir(t)).steps()[0]
        assert np.max(np.abs(trie_item_probs(record, len(task.items), t) - np.array(measured.probs))) < 1e-9
    for r in summary["tasks"]["flat"]["rows"]:
        for key in ("e_score", "atvd", "entropy", "on_set_mass"):
            assert r["derived"][key]["mean"] == pytest.approx(r["measured"][key]["mean"], abs=1e-9), (r, key)


def test_calibration_table(backend):
    rules = rule_grid(top_k=(1, 5, 50), top_p=(0.9,), min_p=(0.1,))
    summary, records = calibrate(get_valid_set("vowels"), backend, rules, 8, 1.0, 0)
    steps = summary["steps"]["all"]
    assert steps["rules"]["oracle"] == {"precision": 1.0, "recall": 1.0}
    assert summary["sequences"]["oracle"]["validity_rate"] == 1.0
    others = [v for k, v in steps["rules"].items() if k != "oracle"]
    assert all(0 <= v["precision"] <= 1 and 0 <= v["recall"] <= 1 for v in others)
    assert any(v["precision"] < 1 or v["recall"] < 1 for v in others)  # real rules are not the oracle
    assert steps["rules"]["none"]["recall"] == 1.0
    assert 0 < steps["validity_mass"] < 1 and 0 < steps["auroc"] <= 1
    assert len(records) == summary["nodes"] == 6  # the root and the five vowels


def test_diversity_never_exceeds_the_ideal_curve(backend):
    out = diversity(get_valid_set("primes-100"), backend, Rule("none"), 30, 1.0, 0)
    assert all(e <= i + 1e-9 for e, i in zip(out["expected"], out["ideal"]))
    n = np.arange(1, 31)
    assert np.all(np.array(out["observed"]) <= np.minimum(n, 25))
    assert 0 <= out["validity_probability"] <= 1 and out["unexplored_mass"] < 0.05
