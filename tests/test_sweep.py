"""Temperature sweeps on the mock backend: run files, derived numbers, response, re-rendering."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deval.core.protocol import Filters, Step, TrieLogprobs
from deval.backends.mock import MockBackend
from deval.cli.main import app
from deval.analyses.profile import ProfileConfig
from deval.core.sampling import with_temperature
from deval.runs.store import RunDir
from deval.analyses.sweep import SCHEMA, SweepConfig, derived_p_token, parse_temperatures, run_sweep, trie_item_probs
from deval.core.tasks import TaskCatalog, task_from_dict
from deval.errors import ConfigError
from exact_fakes import FakeTrieBackend

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


TENS = task_from_dict({"name": "tens", "items": ["1", "2", "3", "10"], "weights": [0.4, 0.2, 0.2, 0.2],
                       "prompt": "{steps} numbers from {items}: {distribution}"}, "test")


@pytest.mark.parametrize("temperature", [0.3, 0.5, 1.0, 1.7, 2.0])
def test_trie_record_gives_the_brute_force_item_probabilities(temperature):
    fake = FakeTrieBackend()
    children, ends = fake.trie(TENS.items)
    for seed, step in ((1, 0), (2, 5)):
        rows = {node: fake.row(seed, step, node) for node in children}
        record = TrieLogprobs.from_rows(children, ends, rows, (0.3, 0.5, 1.0, 1.7, 2.0))
        expected = fake.brute_force(TENS.items, seed, step, temperature)
        assert np.all(expected > 0) and expected.sum() < 1  # mass goes off the set; "1" competes with "10"
        np.testing.assert_allclose(trie_item_probs(record, 4, temperature), expected, rtol=0, atol=1e-12)
    assert trie_item_probs(record, 4, 0.9) is None  # a temperature that was not recorded


def test_sweep_derives_multi_token_items_exactly(tmp_path):
    """Every derived number equals the measured one at every temperature (the fake's rows ignore its samples)."""
    cfg = SweepConfig(ProfileConfig(backend="fake", model="fake-trie", tasks=(TENS,), runs=2, steps=3),
                      (0.5, 1.0, 2.0))
    summary = run_sweep(cfg, FakeTrieBackend(), tmp_path)
    task = summary["tasks"]["tens"]
    assert "item trie" in task["derived_note"]
    for r in task["rows"]:
        for key in ("e_score", "atvd", "entropy", "on_set_mass"):
            assert r["derived"][key]["mean"] == pytest.approx(r["measured"][key]["mean"], abs=1e-9), (r, key)
    assert task["best_temperature_derived"] == task["best_temperature"]
    # only the T=1 run records the trie, at the sweep's temperatures; the other runs' records stay lean
    t1 = RunDir(tmp_path / "T1").steps()
    assert all(s.trie_logprobs.temperatures == (0.5, 1.0, 2.0) for s in t1)
    assert all(s.trie_logprobs is None for s in RunDir(tmp_path / "T2").steps())
    manifest = json.loads((tmp_path / "T1" / "manifest.json").read_text())
    assert manifest["config"]["derive_temperatures"] == [0.5, 1.0, 2.0]
    assert "derive_temperatures" not in json.loads((tmp_path / "T2" / "manifest.json").read_text())["config"]


def test_trie_record_round_trips_through_the_steps_file():
    fake = FakeTrieBackend()
    children, ends = fake.trie(TENS.items)
    record = TrieLogprobs.from_rows(children, ends, {n: fake.row(0, 0, n) for n in children}, (0.5, 2.0))
    s = Step("tens", 0, 0, (0.1, 0.2, 0.3, 0.1), 1, "2", trie_logprobs=record)
    back = Step.from_record(json.loads(json.dumps(s.to_record())))
    assert back == s and trie_item_probs(back.trie_logprobs, 4, 2.0).tolist() == \
        trie_item_probs(record, 4, 2.0).tolist()
    assert "trie_logprobs" not in Step("t", 0, 0, (1.0,), 0, "1").to_record()


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


def test_no_best_temperature_where_no_temperature_passes_the_format_minimum(tmp_path):
    summary = run_sweep(config("off-format"), MockBackend("off-format"), tmp_path)
    task = summary["tasks"]["extreme"]
    assert all(r["measured"]["on_set_mass"]["mean"] < 0.5 for r in task["rows"])
    assert task["best_temperature"] is None and "no temperature passes" in task["best_temperature_note"]
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert "no temperature passes" in result.output
