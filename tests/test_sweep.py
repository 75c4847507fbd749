"""Temperature sweeps on the mock backend: run files, derived numbers, response, re-rendering."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deval.backend import Filters, Step
from deval.backends.mock import MockBackend
from deval.cli import app
from deval.profile import ProfileConfig
from deval.sampling import with_temperature
from deval.sweep import SCHEMA, SweepConfig, derived_p_token, parse_temperatures, run_sweep
from deval.tasks import TaskCatalog
from deval.errors import ConfigError

runner = CliRunner()


def config(model, temps=(0.5, 1.0, 2.0), filters=Filters(), runs=3):
    tasks = (TaskCatalog.load().get("extreme"),)
    return SweepConfig(ProfileConfig(backend="mock", model=model, tasks=tasks, runs=runs, steps=12, filters=filters),
                       temps)


def test_derived_p_token_is_softmax_of_logp_over_t():
    logp = np.log(np.array([0.1, 0.6, 0.2, 0.05]))
    for t in (0.5, 1.0, 2.0):
        expected = np.exp(with_temperature(logp, t))
        np.testing.assert_allclose(derived_p_token([[v] for v in logp], t), expected)
    # two spellings of one item ("7" and " 7") are tempered separately, then summed
    two = derived_p_token([[np.log(0.3), np.log(0.1)], [np.log(0.2)]], 2.0)
    w = np.array([0.3 ** 0.5 + 0.1 ** 0.5, 0.2 ** 0.5])
    np.testing.assert_allclose(two, w / w.sum())


def test_sweep_writes_run_files_and_derived_matches_mock(tmp_path):
    summary = run_sweep(config("e"), MockBackend("e"), tmp_path)
    assert summary["schema"] == SCHEMA
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["schema"] == SCHEMA and on_disk["temperatures"] == [0.5, 1.0, 2.0]
    for t in ("T0.5", "T1", "T2"):
        assert json.loads((tmp_path / t / "summary.json").read_text())["schema"] == "deval.profile/1"
    rows = summary["tasks"]["extreme"]["rows"]
    e = [r["measured"]["e_score"]["mean"] for r in rows]
    assert e[0] > e[1] > e[2]  # an E-model flattens
    # the mock's per-step distribution does not depend on its own samples: re-tempering the T=1 path is exact
    for r in rows:
        assert r["derived"]["e_score"]["mean"] == pytest.approx(r["measured"]["e_score"]["mean"], abs=1e-9)
        assert r["derived"]["atvd"]["mean"] == pytest.approx(r["measured"]["atvd"]["mean"], abs=1e-9)
    assert summary["tasks"]["extreme"]["best_temperature"] == 1.0
    assert "flattens" in summary["tasks"]["extreme"]["response"]


def test_d_model_responds_less_than_e_model_at_low_temperatures(tmp_path):
    d = run_sweep(config("d", temps=(0.5, 1.0)), MockBackend("d"), tmp_path / "d")
    e = run_sweep(config("e", temps=(0.5, 1.0)), MockBackend("e"), tmp_path / "e")
    assert abs(d["tasks"]["extreme"]["e_score_move"]) < 0.1 < abs(e["tasks"]["extreme"]["e_score_move"])
    assert "barely responds" in d["tasks"]["extreme"]["response"]


def test_no_derived_numbers_without_t1_or_with_filters(tmp_path):
    s = run_sweep(config("e", temps=(0.5, 2.0)), MockBackend("e"), tmp_path / "a")
    assert all(r["derived"] is None for r in s["tasks"]["extreme"]["rows"])
    assert "include 1" in s["tasks"]["extreme"]["derived_note"]
    s = run_sweep(config("e", filters=Filters(top_k=2)), MockBackend("e"), tmp_path / "b")
    assert all(r["derived"] is None for r in s["tasks"]["extreme"]["rows"])
    cover = [r["measured"]["kept_coverage"]["mean"] for r in s["tasks"]["extreme"]["rows"]]
    assert all(c < 1.0 for c in cover)  # top-2 of 4 items drops part of P_task


def test_step_record_round_trip_and_old_records():
    s = Step("t", 0, 0, (0.5, 0.5), 1, "2", item_logprobs=((-0.7,), (-0.7, -3.0)))
    assert Step.from_record(json.loads(json.dumps(s.to_record()))) == s
    old = s.to_record()
    del old["item_logprobs"]
    assert Step.from_record(old).item_logprobs is None
    assert "item_logprobs" not in Step("t", 0, 0, (1.0,), 0, "1").to_record()


def test_parse_temperatures():
    assert parse_temperatures("2, 0.5,1,1") == (0.5, 1.0, 2.0)
    for bad in ("", "a,1", "0,1", "-1", "nan"):
        with pytest.raises(ConfigError):
            parse_temperatures(bad)


def test_cli_sweep_and_report(tmp_path):
    out = tmp_path / "sw"
    r = runner.invoke(app, ["sweep", "--backend", "mock", "--model", "e", "--task", "extreme", "--runs", "2",
                            "--steps", "6", "--temperatures", "0.5,1,2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "ATVD is lowest at T=" in r.output
    again = runner.invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and "temperature sweep" in again.output
    sub = runner.invoke(app, ["report", str(out / "T2")])
    assert sub.exit_code == 0 and "temperature 2" in sub.output
    bad = runner.invoke(app, ["sweep", "--backend", "mock", "--model", "e", "--temperatures", "0,1"])
    assert bad.exit_code != 0 and isinstance(bad.exception, ConfigError)
