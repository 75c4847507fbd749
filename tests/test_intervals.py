"""Honest numbers: intervals that cover, no false precision, quota r that is 0 without feedback."""

import numpy as np
import pytest

from deval.analyses.profile import ProfileConfig, run_profile
from deval.backends.mock import MockBackend, batch_probs
from deval.core import metrics
from deval.core.protocol import RunSpec
from deval.core.summary import summarise_task
from deval.core.tasks import TaskCatalog
from deval.runs.store import RunDir

CATALOG = TaskCatalog.load()
PROFILES, RUNS, STEPS = 1000, 10, 30


def per_run(probs: np.ndarray, p_task: np.ndarray) -> dict[str, np.ndarray]:
    ptok = metrics.p_token(probs)
    return {"atvd": metrics.tv(ptok, p_task).mean(axis=-1), "e_score": ptok.max(axis=-1).mean(axis=-1),
            "volatility": metrics.volatility(ptok.reshape(-1, *ptok.shape[-2:])).reshape(ptok.shape[:-2] + (-1,))
            .mean(axis=-1)}


@pytest.mark.parametrize("model", ["d", "e", "uniform"])
@pytest.mark.parametrize("task", ["extreme", "flat"])
def test_t_intervals_over_ten_runs_cover_at_their_nominal_level(model, task):
    """1,000 simulated profiles of 10 runs: the 95% interval holds the true mean at least 93% of the time."""
    p_task = CATALOG.get(task).p_task
    rng = np.random.default_rng(7)
    truth = {k: v.mean() for k, v in per_run(batch_probs(model, p_task, 20_000, STEPS, rng), p_task).items()}
    values = per_run(batch_probs(model, p_task, PROFILES * RUNS, STEPS, rng).reshape(PROFILES, RUNS, STEPS, -1),
                     p_task)
    for key, v in values.items():
        lo, hi = metrics.t_interval(v)
        coverage = float(np.mean((lo <= truth[key]) & (truth[key] <= hi)))
        assert coverage >= 0.93, (key, coverage)
        assert np.all(hi > lo)  # the runs differ, so no interval has zero width


@pytest.mark.parametrize("model,positions", [("d", "free"), ("e", "free"), ("uniform", "free"),
                                             ("quota", "free"), ("off-format", "constrained")])
def test_no_zero_width_interval_unless_the_runs_sampled_the_same_texts(model, positions, tmp_path):
    config = ProfileConfig(backend="mock", model=model, tasks=(CATALOG.get("extreme"), CATALOG.get("flat")),
                           runs=10, positions=positions)
    summary = run_profile(config, MockBackend(model), RunDir.create(tmp_path / model, {"config": config.to_dict()}))
    for name, s in summary["tasks"].items():
        assert not s["runs_identical"]
        for key, stat in s.items():
            if isinstance(stat, dict) and "ci" in stat and not np.isnan(stat["mean"]):
                lo, hi = stat["ci"]
                assert hi > lo or key in ("tail_mass", "kept_coverage"), (name, key, stat)  # both exactly 0/1 here


def test_identical_runs_are_the_one_case_of_a_zero_width_interval():
    task = CATALOG.get("extreme")
    steps = list(MockBackend("e").measure([RunSpec(task=task, run=0, seed=1, mode="sequence", steps=30)]))
    twins = steps + [type(s)(**{**s.__dict__, "run": 1}) for s in steps]
    s = summarise_task(task, twins, seed=0)
    assert s["runs_identical"] and s["atvd"]["ci"][0] == pytest.approx(s["atvd"]["ci"][1])


def quota(model: str, runs: int = 1000) -> tuple[float, dict]:
    task = CATALOG.get("extreme")
    specs = [RunSpec(task=task, run=r, seed=r, mode="sequence", steps=30) for r in range(runs)]
    s = summarise_task(task, list(MockBackend(model).measure(specs)), seed=0)
    return s["quota_r"]["mean"], s


@pytest.mark.parametrize("model", ["e", "uniform"])
def test_quota_r_is_zero_for_a_model_without_feedback(model):
    r, s = quota(model)
    assert abs(r) < 0.05, r


def test_quota_r_is_positive_for_a_compensating_model():
    r, _ = quota("quota")
    assert r > 0.3, r


def test_quota_r_is_na_with_a_reason():
    p_task = np.array([0.5, 0.5])
    ptok = np.tile(p_task, (2, 5, 1))
    sampled = np.full((2, 5), metrics.INVALID)  # no valid sample at all
    assert np.isnan(metrics.quota_r(ptok, sampled, p_task)).all()
    assert "fewer than 3 valid samples" in metrics.quota_note(ptok, sampled, p_task)
    sampled = np.tile([0, 1, 0, 1, 0], (2, 1))  # a constant P_token: its deviation is constant within every item
    assert "constant" in metrics.quota_note(ptok, sampled, p_task)
