"""`deval code` as a user runs it: --completions, the mock backend with scripted replies, --resume, report,
--with-profile, and one-line errors."""

import json

import pytest

from conftest import one_line_error, run_cli, run_json
from deval.analyses.code import passk, programs
from deval.analyses.code.problems import load_problems
from deval.analyses.code.sandbox import available

pytestmark = pytest.mark.skipif(available()[0] == "rlimits", reason=f"no namespaces here: {available()[1]}")
PROBLEMS = load_problems()[:3]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_completions_file_is_scored_with_pass_at_k_and_diversity(tmp_path):
    rows = []
    for p in PROBLEMS:
        rows += [{"task_id": p.task_id, "completion": p.canonical_solution},
                 {"task_id": p.task_id, "completion": "    # the same, commented\n" + p.canonical_solution},
                 {"task_id": p.task_id, "completion": "    return None\n"}]
    rows.append({"task_id": "HumanEval/100", "completion": "    return 1\n"})  # not selected: skipped
    path = write_jsonl(tmp_path / "completions.jsonl", rows)
    out = tmp_path / "run"
    summary = run_json("code", "--completions", str(path), "--problems", "0-2", "--out", str(out))
    g = summary["groups"]["file"]
    assert g["samples"] == 9 and g["passed"] == 6
    assert g["pass@k"]["1"]["mean"] == pytest.approx(2 / 3)
    assert g["distinct_solutions"]["mean"] == 2.0 and g["distinct_passing"]["mean"] == 1.0
    assert summary["sandbox"]["mechanism"] == available()[0]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 9 and {r["reason"] for r in records if not r["passed"]} <= {"AssertionError", "TypeError"}
    assert run_json("report", str(out)) == summary
    text = run_cli("report", str(out)).stdout
    assert "pass@1" in text and "sandbox: " in text


def scripted(tmp_path):
    script = {}
    for p in PROBLEMS:
        good = f"```python\n{p.prompt}{p.canonical_solution}```"
        bad = f"Sure!\n```python\ndef {p.entry_point}(*args):\n    return None\n```\n\nThis works."
        script[programs.prompt_text(p, raw=False)] = [good, good.replace("\n\n", "\n"), bad]
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    return path


def test_mock_generation_resume_and_report(tmp_path):
    out = tmp_path / "run"
    args = ("code", "--backend", "mock", "--model", "e", "--mock-script", str(scripted(tmp_path)), "--problems",
            "0-2", "--samples", "12", "--temperature", "0.5,1", "--workers", "2", "--max-tokens", "4000")
    full = run_json(*args, "--out", str(out))
    assert list(full["groups"]) == ["0.5", "1"]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 72
    for key, g in full["groups"].items():
        mine = [r for r in records if r["group"] == key]
        counts = [(12, sum(r["passed"] for r in mine if r["task_id"] == p.task_id)) for p in PROBLEMS]
        assert g["pass@k"]["1"]["mean"] == pytest.approx(sum(c for _, c in counts) / 36)
        p10 = sum(passk.pass_at_k(n, c, 10) for n, c in counts) / 3
        assert g["pass@k"]["10"]["mean"] == pytest.approx(p10)
        assert g["delta_pass"]["10"]["mean"] == pytest.approx(p10 - g["pass@k"]["1"]["mean"])
        assert 1 <= g["distinct_solutions"]["mean"] <= 3 and g["distinct_passing"]["mean"] <= 2
    assert 0 < full["groups"]["1"]["passed"] < 36  # the scripted good and bad replies both occur
    # an interrupted run: the summary gone, the last records lost, a torn line at the end
    (out / "summary.json").unlink()
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:-10]) + '{"group": "1", "task')
    resumed = run_json("code", "--resume", str(out))
    assert resumed["groups"] == full["groups"]
    assert len((out / "samples.jsonl").read_text().splitlines()) == 72
    assert "Δpass@10" in run_cli("report", str(out)).stdout


def test_profile_verdict_is_shown_beside(tmp_path):
    profile = tmp_path / "profile"
    shown = run_json("profile", "--backend", "mock", "--model", "d", "--runs", "10", "--out", str(profile))
    path = write_jsonl(tmp_path / "c.jsonl", [{"task_id": "HumanEval/0", "completion": PROBLEMS[0].canonical_solution}])
    out = tmp_path / "run"
    summary = run_json("code", "--completions", str(path), "--problems", "0", "--with-profile", str(profile),
                       "--out", str(out))
    assert summary["profile"]["verdict"]["type"] == shown["verdict"]["type"] == "D"
    assert "profile of" in run_cli("report", str(out)).stdout


def test_bad_input_is_one_line(tmp_path):
    assert "--problems" in one_line_error(run_cli("code", "--backend", "mock", "--model", "e", "--problems", "0-999"))
    assert "--temperature" in one_line_error(run_cli("code", "--backend", "mock", "--model", "e",
                                                     "--temperature", "hot"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": 3}\n')
    assert "line 2" in one_line_error(run_cli("code", "--completions", str(bad), "--out", str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()
    assert "--mock-script" not in one_line_error(run_cli("code", "--backend", "local", "--mock-script", str(bad)))
    good = write_jsonl(tmp_path / "good.jsonl", [{"task_id": "HumanEval/0", "completion": "    return 1\n"}])
    assert "--out directory" in one_line_error(run_cli("code", "--completions", str(good), "--with-profile",
                                                       str(tmp_path / "missing")))
