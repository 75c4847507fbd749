"""The core end to end on the mock backend: verdicts, determinism, run files, resume."""

import json

import numpy as np
import pytest

from deval.backends.mock import MockBackend
from deval.analyses.profile import ProfileConfig, run_profile
from deval.runs.store import RunDir
from deval.core.tasks import TaskCatalog

CATALOG = TaskCatalog.load()


def profile(model, tmp_path, tasks=("flat",), runs=10, **kw):
    config = ProfileConfig(backend="mock", model=model, tasks=tuple(CATALOG.get(t) for t in tasks), runs=runs, **kw)
    backend = MockBackend(model)
    run_dir = RunDir.create(tmp_path / model, {"config": config.to_dict()})
    return run_profile(config, backend, run_dir), backend, run_dir


def test_d_model_is_classified_d_and_still_matches_p_task_in_aggregate(tmp_path):
    summary, _, _ = profile("d", tmp_path, tasks=("extreme", "flat"))
    flat = summary["tasks"]["flat"]
    assert summary["verdict"]["type"] == "D"
    assert flat["e_score"]["mean"] > 0.9
    assert flat["atvd"]["mean"] > 0.8  # near E[ATVD] 0.88 for one-hot steps
    assert flat["pooled_result_tvd"] < 0.1  # ... while the pooled output follows P_task
    assert "pooled output still matches" in summary["verdict"]["reason"]
    assert summary["verdict"]["reason"].startswith("alignment and stability decide: misaligned and variable")
    assert "nearer the ideal D sampler" in summary["verdict"]["reason"]


def test_e_model_is_classified_e(tmp_path):
    summary, _, _ = profile("e", tmp_path, tasks=("extreme", "flat"))
    flat = summary["tasks"]["flat"]
    assert summary["verdict"]["type"] == "E"
    assert summary["verdict"]["reason"].startswith("alignment and stability decide: aligned and stable")
    assert "nearer the ideal E sampler" in summary["verdict"]["reason"]
    assert flat["atvd"]["mean"] < 0.1
    assert abs(flat["e_score"]["mean"] - 0.2) < 0.05
    lo, hi = flat["atvd"]["ci"]
    assert lo <= flat["atvd"]["mean"] <= hi


def test_uniform_model_is_not_e_but_stable_and_misaligned(tmp_path):
    """Uniform is close to P_task on flat (TV 0.089) but far from it on extreme: every task is weighed."""
    summary, _, _ = profile("uniform", tmp_path, tasks=("extreme", "flat"))
    assert summary["tasks"]["extreme"]["atvd"]["mean"] == pytest.approx(0.45, abs=0.01)
    v = summary["verdict"]
    assert v["type"] == "stable but misaligned" and v["type"] != "E"
    assert v["axes"]["alignment"]["task"] == "extreme" and v["reason"].startswith("alignment decides")


def test_off_format_model_is_a_format_failure_with_a_reason(tmp_path):
    summary, _, _ = profile("off-format", tmp_path)
    assert summary["verdict"]["type"] == "format failure"
    assert "does not answer in the task's format" in summary["verdict"]["reason"]
    flat = summary["tasks"]["flat"]
    assert flat["invalid_rate"] > 0.7 and flat["format_failures"] == flat["positions"] == 300
    assert np.isnan(flat["atvd"]["mean"])  # format failures are left out of ATVD


def test_constrained_off_format_model_is_measured(tmp_path):
    summary, _, _ = profile("off-format", tmp_path, tasks=("extreme", "flat"), positions="constrained")
    assert summary["verdict"]["type"] == "E" and summary["positions"] == "constrained"
    assert summary["tasks"]["flat"]["on_set_mass"]["mean"] == pytest.approx(0.1, abs=0.01)  # still recorded
    assert summary["tasks"]["flat"]["invalid_rate"] == 0.0


def test_min_mass_is_an_option(tmp_path):
    summary, _, _ = profile("off-format", tmp_path, min_mass=0.05)
    assert summary["tasks"]["flat"]["format_failures"] == 0 and summary["min_mass"] == 0.05


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path):
    a, _, _ = profile("e", tmp_path / "a", seed=3)
    b, _, _ = profile("e", tmp_path / "b", seed=3)
    c, _, _ = profile("e", tmp_path / "c", seed=4)
    assert a["tasks"] == b["tasks"]
    assert a["tasks"]["flat"]["atvd"] != c["tasks"]["flat"]["atvd"]


def test_mock_records_calls_and_temperature_flattens(tmp_path):
    cold, backend, _ = profile("e", tmp_path / "cold", runs=3, temperature=0.5)
    hot, _, _ = profile("e", tmp_path / "hot", runs=3, temperature=2.0)
    assert [spec.run for spec in backend.calls] == [0, 1, 2]
    assert all(spec.temperature == 0.5 for spec in backend.calls)
    assert cold["tasks"]["flat"]["e_score"]["mean"] > hot["tasks"]["flat"]["e_score"]["mean"]


def test_run_files_written_as_steps_arrive(tmp_path):
    summary, _, run_dir = profile("d", tmp_path, runs=2, steps=5)
    lines = (run_dir.path / "steps.jsonl").read_text().splitlines()
    assert len(lines) == 10
    first = json.loads(lines[0])
    assert set(first) >= {"run", "step", "probs", "on_set_mass", "sampled", "final"}
    assert json.loads((run_dir.path / "summary.json").read_text())["schema"] == "deval.profile/1"


def test_resume_measures_only_missing_runs_and_gives_the_same_summary(tmp_path):
    full, _, _ = profile("e", tmp_path / "full", runs=4, steps=6)
    # an interrupted run: two complete runs, one torn in the middle, then a torn last line
    config = ProfileConfig(backend="mock", model="e", tasks=(CATALOG.get("flat"),), runs=4, steps=6)
    run_dir = RunDir.create(tmp_path / "cut", {"schema": "deval.manifest/1", "config": config.to_dict()})
    steps = list(MockBackend("e").measure(config.run_specs(CATALOG.get("flat"))))
    for step in steps[:15]:
        run_dir.append(step)
    run_dir.close()
    with (run_dir.path / "steps.jsonl").open("a") as fh:
        fh.write('{"task": "flat", "run": 2, "st')
    backend = MockBackend("e")
    resumed = run_profile(config, backend, RunDir.open(run_dir.path))
    assert [spec.run for spec in backend.calls] == [2, 3]
    assert resumed["tasks"] == full["tasks"]
    records = [json.loads(line) for line in (run_dir.path / "steps.jsonl").read_text().splitlines()]
    assert len(records) == 24 and len({(r["run"], r["step"]) for r in records}) == 24


def test_filters_shrink_the_kept_set(tmp_path):
    from deval.core.sampling import Filters
    summary, _, _ = profile("e", tmp_path, runs=2, filters=Filters(top_k=1))
    flat = summary["tasks"]["flat"]
    assert flat["e_score"]["mean"] == pytest.approx(1.0)
    assert np.isclose(flat["on_set_mass"]["mean"], 1.0)


def test_extremity_interval_is_the_e_score_interval_transformed(tmp_path):
    summary, _, _ = profile("e", tmp_path, runs=6, steps=5)
    flat = summary["tasks"]["flat"]
    top = max(flat["p_task"].values())
    lo, hi = flat["e_score"]["ci"]
    assert flat["extremity"]["ci"] == pytest.approx([(lo - top) / (1 - top), (hi - top) / (1 - top)])
