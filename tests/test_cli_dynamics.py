"""The calibration and diversity commands on the fake exact model; their run files re-render with 'report'."""

import json

import pytest
from typer.testing import CliRunner

from deval import backends as registry
from deval.cli.main import app
from deval.errors import ConfigError
from conftest import one_line_error, run_cli
from exact_fakes import FakeExact

runner = CliRunner()


class FakeBackend(FakeExact):
    name = "fake"
    exact = True
    OPTIONS = ()

    def __init__(self, model=None, **options):
        super().__init__(favourite=b"a" if model in (None, "a") else b"e")
        self.model = model or "a"

    def describe(self):
        return {"name": "fake", "model": self.model}

    def close(self):
        pass


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "backend_class", lambda name: FakeBackend)
    monkeypatch.setattr(registry, "create", lambda name, model, **o: FakeBackend(model))
    task = tmp_path / "fake.toml"
    task.write_text('name = "fake"\nkind = "valid-set"\nmembers = ["a", "ae", "o", "11", "13"]\nprompt = "pick"\n')
    return task


def test_calibration_command_and_report(fake, tmp_path):
    out = tmp_path / "cal"
    r = runner.invoke(app, ["calibration", "--task", str(fake), "--samples", "20", "--top-ks", "1,3",
                            "--top-ps", "0.9", "--min-ps", "0.1", "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "deval.calibration/1"
    assert summary["tasks"]["fake"]["steps"]["all"]["rules"]["oracle"] == {"precision": 1.0, "recall": 1.0}
    nodes = [json.loads(line) for line in (out / "nodes.jsonl").read_text().splitlines()]
    assert len(nodes) == summary["tasks"]["fake"]["nodes"]
    again = runner.invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and "cutoff rules: per step" in again.output and "top-k 3" in again.output


def test_diversity_command_compare_and_report(fake, tmp_path):
    out = tmp_path / "div"
    r = runner.invoke(app, ["diversity", "--task", str(fake), "--samples", "25", "--model", "a", "--compare", "e",
                            "--top-k", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema"] == "deval.diversity/1" and set(summary["models"]) == {"a", "e"}
    for d in summary["models"].values():
        assert all(e <= i + 1e-9 for e, i in zip(d["expected"], d["ideal"]))
    again = runner.invoke(app, ["report", str(out)])
    assert again.exit_code == 0 and "ideal uniform sampler" in again.output


def test_bad_input_is_a_config_error(fake):
    for args in (["calibration", "--task", "nope"], ["calibration", "--task", str(fake), "--top-ps", "x"],
                 ["diversity", "--task", str(fake), "--samples", "0"], ["calibration", "--task", str(fake),
                                                                         "--filter-order", "random"]):
        r = runner.invoke(app, args)
        assert r.exit_code != 0 and isinstance(r.exception, ConfigError), args


def without_passes(summary):
    """The summary less forward-pass counts: a resumed run re-warms its cache, so it spends more of them."""
    if isinstance(summary, dict):
        return {k: without_passes(v) for k, v in summary.items() if k != "forward_passes"}
    return summary


def cut(path, keep, torn=True):
    """Keep the first `keep` lines of a JSON-lines file, then half a line, as a crash mid-write leaves it."""
    lines = path.read_text().splitlines()
    path.write_text("".join(line + "\n" for line in lines[:keep]) + (lines[keep][: len(lines[keep]) // 2]
                                                                      if torn else ""))
    return lines


def test_calibration_resume_finishes_only_what_is_missing(fake, tmp_path):
    out = tmp_path / "cal"
    args = ["calibration", "--task", str(fake), "--samples", "15", "--top-ks", "1,3", "--top-ps", "0.9",
            "--min-ps", "0.1", "--out", str(out), "--json"]
    first = json.loads(runner.invoke(app, args).stdout)
    nodes = cut(out / "nodes.jsonl", 2)
    samples = cut(out / "samples.jsonl", 40)
    (out / "summary.json").unlink()
    r = runner.invoke(app, ["calibration", "--resume", str(out), "--json"])
    assert r.exit_code == 0, r.output
    resumed = json.loads(r.stdout)
    assert without_passes(resumed) == without_passes(first) and first["tasks"]["fake"]["forward_passes"] > 0
    assert {**json.loads((out / "summary.json").read_text()), "run_dir": str(out)} == resumed
    # finished records are kept as they were and not redone (a redone one would be appended twice)
    again = (out / "nodes.jsonl").read_text().splitlines()
    assert again[:2] == nodes[:2] and len(again) == len(nodes) == len({json.dumps(json.loads(x)["tokens"])
                                                                        for x in again})
    again = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert again[:40] == [json.loads(x) for x in samples[:40]]
    assert len(again) == len(samples) == 15 * 6 and len({(r["rule"], r["index"]) for r in again}) == 15 * 6
    # a second resume has nothing left to do and gives the same summary
    assert json.loads(runner.invoke(app, ["calibration", "--resume", str(out), "--json"]).stdout) == resumed


def test_diversity_resume_finishes_only_what_is_missing(fake, tmp_path):
    out = tmp_path / "div"
    args = ["diversity", "--task", str(fake), "--samples", "20", "--model", "a", "--compare", "e", "--out", str(out),
            "--json"]
    first = json.loads(runner.invoke(app, args).stdout)
    samples = cut(out / "samples.jsonl", 25)  # model a done, model e 5 of 20 and a torn line
    exact = cut(out / "exact.jsonl", 1, torn=False)  # model a's exact record kept, e's lost
    (out / "summary.json").unlink()
    r = runner.invoke(app, ["diversity", "--resume", str(out), "--json"])
    assert r.exit_code == 0, r.output
    resumed = json.loads(r.stdout)
    assert without_passes(resumed) == without_passes(first)
    assert len((out / "samples.jsonl").read_text().splitlines()) == len(samples) == 40
    assert len((out / "exact.jsonl").read_text().splitlines()) == len(exact) == 2


def test_resume_errors(fake, tmp_path):
    out = tmp_path / "cal"
    assert runner.invoke(app, ["calibration", "--task", str(fake), "--samples", "2", "--out", str(out)]).exit_code == 0
    again = runner.invoke(app, ["calibration", "--task", str(fake), "--samples", "2", "--out", str(out)])
    assert isinstance(again.exception, ConfigError) and f"--resume {out}" in str(again.exception)
    wrong = runner.invoke(app, ["diversity", "--resume", str(out)])
    assert isinstance(wrong.exception, ConfigError) and "not a 'diversity' run directory" in str(wrong.exception)
    missing = runner.invoke(app, ["calibration", "--resume", str(tmp_path / "none")])
    assert isinstance(missing.exception, ConfigError) and "not found" in str(missing.exception)


@pytest.mark.parametrize("name, says", [("nope", "unknown valid-set task 'nope'"),
                                         ("flat", "'flat' is a weighted task (for profile and sweep)")])
def test_unknown_valid_set_names_say_where_to_look(name, says):
    line = one_line_error(run_cli("calibration", "--task", name))
    assert says in line and "run 'deval tasks'" in line and "tasks/valid" in line
    assert "us-states" in line and ".toml path" in line


def test_a_backend_without_exact_distributions_is_refused(tmp_path):
    r = runner.invoke(app, ["diversity", "--backend", "mock", "--model", "e", "--task", "vowels"])
    assert isinstance(r.exception, ConfigError) and "exact" in str(r.exception)


@pytest.mark.parametrize("command", ["diversity", "calibration"])
def test_an_http_backend_is_refused_as_inexact_before_it_asks_for_a_key(command):
    line = one_line_error(run_cli(command, "--backend", "openai", "--model", "m",
                                  env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}))
    assert "no exact next-token distributions" in line and "--backend local" in line and "API key" not in line
