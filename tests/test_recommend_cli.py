"""deval recommend end to end: completions files, a scripted mock backend, --resume, deval report, bad input, and
the embedded model on the fixture."""

import json

import pytest

import recommend_data as hand
from conftest import FIXTURES, needs_model, one_line_error, run_cli, run_json
from deval.analyses.recommend import data, protocol
from deval.analyses.recommend.run import RecommendConfig, run_recommend, start
from deval.analyses.recommend.titles import display
from deval.backends.mock import MockBackend

ML1M = FIXTURES / "movielens-small"


def test_completions_file_through_the_cli_and_report(tmp_path):
    directory = hand.write(tmp_path / "d")
    completions = hand.write_completions(tmp_path / "c.jsonl")
    out = tmp_path / "run"
    summary = run_json("recommend", "--data", str(directory), "--completions", str(completions), "--history", "2",
                       "--k", "3", "--out", str(out))
    m = summary["groups"][0]["metrics"]
    assert (m["hit"]["mean"], m["can_hit"]["mean"]) == (0.25, 0.5)
    assert summary["groups"][0]["label"] == "completions"
    assert run_json("report", str(out)) == summary
    shown = run_cli("report", str(out))
    assert shown.returncode == 0 and "hit@K" in shown.stdout and "Dune (1984)" in shown.stdout


def _scripted(cases, titles, k, answer):
    """A mock script: each user's prompt gets `answer(case)` as its only text."""
    return {protocol.prompt(c, titles, k): [answer(c)] for c in cases}


def test_scripted_backend_gets_seeded_specs_and_known_hits(tmp_path):
    d = data.load(ML1M)
    titles = {m: mv.title for m, mv in d.movies.items()}
    config = RecommendConfig(data=str(ML1M), users=6, history=10, k=3, samples=2, temperatures=(0.5, 1.0))
    cases = protocol.draw_users(protocol.eligible_cases(d, 10), 6, 0)
    hit_users = {c.user for c in cases[:2]}
    script = _scripted(cases, titles, 3, lambda c: f"1. {display(titles[c.held_out])}\n2. Made Up Film (1990)"
                       if c.user in hit_users else "1. Made Up Film (1990)")
    backend = MockBackend("d", script=script)
    config, path = start(config, tmp_path / "run", backend.describe())
    summary = run_recommend(config, backend, path, backend.describe())
    assert len(backend.generated) == 6 * 2 * 2
    spec = backend.generated[0]
    assert spec.max_tokens == 12 * 3 + 8 and spec.temperature == 0.5 and spec.prompt in script
    assert len({s.seed for s in backend.generated}) == len(backend.generated)
    for g in summary["groups"]:
        assert g["metrics"]["hit"]["mean"] == pytest.approx(2 / 6)
        assert g["metrics"]["can_hit"]["mean"] == pytest.approx(2 / 6)
        assert g["metrics"]["hallucination"]["mean"] == pytest.approx((2 * 0.5 + 4 * 1.0) / 6)
        assert g["ptoken"] is None  # the mock gives no exact next-token rows


def test_resume_finishes_a_cut_run_with_the_same_summary(tmp_path):
    out = tmp_path / "run"
    args = ["recommend", "--data", str(ML1M), "--backend", "mock", "--model", "e", "--users", "5", "--samples", "2",
            "--temperatures", "0.5,1", "--k", "3", "--out", str(out)]
    first = run_json(*args)
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) == 5 * 2 * 2
    (out / "samples.jsonl").write_text("".join(lines[:7]) + lines[7][:20])  # killed mid-write
    (out / "summary.json").unlink()
    unfinished = run_cli("report", str(out))
    assert "deval recommend --resume" in one_line_error(unfinished)
    assert run_json("recommend", "--resume", str(out)) == first
    assert len((out / "samples.jsonl").read_text().splitlines()) == 20
    again = run_cli(*args)
    assert "already holds a run" in one_line_error(again)


@pytest.mark.parametrize("extra, message", [
    (["--data", "/nonexistent/ml"], "is not a directory"),
    (["--data", str(ML1M), "--temperatures", "0"], "--temperatures must be > 0"),
    (["--data", str(ML1M), "--users", "1000"], "only"),
    (["--data", str(ML1M), "--completions", "/nonexistent.jsonl"], "not found"),
    ([], "--data DIR is required"),
])
def test_bad_options_are_one_line_errors(tmp_path, extra, message):
    proc = run_cli("recommend", "--backend", "mock", "--model", "e", "--out", str(tmp_path / "r"), *extra)
    assert message in one_line_error(proc)


@pytest.mark.parametrize("lines, message", [
    (['{"user": 1, "sample": 0, "text": "Big"}', "{nope"], "line 2: not JSON"),
    (['{"user": 1, "text": "Big"}'], 'line 1: expected an object with "user"'),
    (['{"user": 1, "sample": 0, "text": "Big"}', '{"user": 1, "sample": 0, "text": "Heat"}'], "appears twice"),
    (['{"user": 1, "sample": 0, "text": "Big"}', '{"user": 42, "sample": 0, "text": "Big"}'],
     "line 2: user 42 is not in the ratings"),
    (['{"user": "1", "sample": 0, "text": "Big"}'], "must be integers"),
])
def test_bad_completions_name_the_line(tmp_path, lines, message):
    directory = hand.write(tmp_path / "d")
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = run_cli("recommend", "--data", str(directory), "--completions", str(path), "--history", "2",
                   "--out", str(tmp_path / "r"))
    assert message in one_line_error(proc)


def test_a_completions_user_without_enough_history(tmp_path):
    directory = hand.write(tmp_path / "d")
    path = hand.write_completions(tmp_path / "c.jsonl")
    proc = run_cli("recommend", "--data", str(directory), "--completions", str(path), "--history", "3",
                   "--out", str(tmp_path / "r"))
    assert "user 1 has no liked movie after 3 liked ones" in one_line_error(proc)


@needs_model
@pytest.mark.model
def test_embedded_model_on_the_fixture(tmp_path):
    out = tmp_path / "run"
    summary = run_json("recommend", "--data", str(FIXTURES / "movielens-small-csv"), "--users", "2", "--samples",
                       "1", "--history", "3", "--k", "3", "--max-tokens", "16", "--temperatures", "1", "--ptoken-budget", "4",
                       "--threads", "2", "--out", str(out), timeout=900)
    (g,) = summary["groups"]
    assert g["samples"] == 2 and g["users"] == 2
    p = g["ptoken"]
    assert p["users"] == 2 and p["budget"] == 4 and p["logprob"]["mean"] < 0
    records = [json.loads(x) for x in (out / "ptoken.jsonl").read_text().splitlines()]
    for r in records:
        (res,) = r["results"]
        assert 1 <= res["rank"] <= res["rank_hi"] <= summary["data"]["movies"]
