"""The CLI as a user runs it: JSON contract, run files, re-rendering, and one-line errors."""

import json

import pytest

from conftest import one_line_error, run_cli, run_json

STAT_KEYS = ("e_score", "atvd", "result_tvd", "on_set_mass", "volatility", "quota_r")


def test_json_summary_contract(tmp_path):
    summary = run_json("profile", "--backend", "mock", "--model", "d", "--task", "flat", "--runs", "4",
                       "--out", str(tmp_path / "r"))
    assert summary["schema"] == "deval.profile/1"
    for key in ("backend", "model", "temperature", "runs", "seed", "tasks", "verdict"):
        assert key in summary
    flat = summary["tasks"]["flat"]
    for key in STAT_KEYS:
        assert set(flat[key]) == {"mean", "ci"} and len(flat[key]["ci"]) == 2
    assert isinstance(flat["invalid_rate"], float) and "chi2_p" in flat
    assert set(summary["verdict"]) >= {"type", "extremity", "reason"}
    assert summary["verdict"]["type"] == "D"
    assert (summary["backend"], summary["model"], summary["runs"]) == ("mock", "d", 4)


def test_out_dir_files_and_report_rerender(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("profile", "--backend", "mock", "--model", "e", "--task", "extreme", "--task", "flat",
                   "--runs", "3", "--steps", "8", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "verdict: E" in proc.stdout and "ATVD" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert [t["name"] for t in manifest["config"]["tasks"]] == ["extreme", "flat"]
    assert manifest["config"]["tasks"][0]["weights"] == [0.1, 0.7, 0.1, 0.1]
    assert "numpy" in manifest["versions"]
    steps = (out / "steps.jsonl").read_text().splitlines()
    assert len(steps) == 2 * 3 * 8
    again = run_cli("report", str(out))
    assert again.returncode == 0 and "verdict: E" in again.stdout
    assert json.loads(run_cli("report", str(out), "--json").stdout) == json.loads((out / "summary.json").read_text())


def test_default_tasks_are_the_papers_pair(tmp_path):
    summary = run_json("profile", "--backend", "mock", "--model", "e", "--runs", "2", "--out", str(tmp_path / "r"))
    assert list(summary["tasks"]) == ["extreme", "flat"]


def test_tasks_and_backends_listings():
    tasks = run_cli("tasks")
    assert tasks.returncode == 0
    for name in ("extreme", "flat", "uniform-10", "binomial-10", "coin", "colors"):
        assert name in tasks.stdout
    assert "0.7" in tasks.stdout
    listed = tasks.stdout.split("valid-set tasks")
    assert len(listed) == 2 and "calibration" in listed[1] and "diversity" in listed[1]
    for name in ("us-states", "primes-100", "two-digit", "vowels", "letters"):
        assert name in listed[1] and name not in listed[0]  # marked apart from the weighted tasks
    assert "50: Alabama" in listed[1]
    backends = run_cli("backends")
    assert "mock" in backends.stdout and "local" in backends.stdout


@pytest.mark.parametrize("args, says", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "vowels"], "'vowels' is a valid-set task (for 'deval calibration'"),
    (["--backend", "nope"], "unknown backend 'nope'"),
    (["--model", "zz"], "unknown mock model 'zz'"),
    (["--runs", "0"], "--runs must be >= 1"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--temperature", "-1"], "--temperature must be > 0"),
    (["--mode", "batch"], "--mode must be one of"),
    (["--top-p", "1.5"], "--top-p must be <= 1"),
    (["--gpu-layers", "3"], "--gpu-layers does not apply to the mock backend"),
    (["--temperature", "nan"], "--temperature must be a finite number"),
    (["--temperature", "inf"], "--temperature must be a finite number"),
    (["--top-p", "nan"], "--top-p must be a finite number"),
])
def test_bad_options_give_one_line_errors(tmp_path, args, says):
    base = ["profile", "--backend", "mock", "--model", "d", "--out", str(tmp_path / "r")]
    # later options win in typer, so the bad value is appended after the good ones
    line = one_line_error(run_cli(*base, *args))
    assert says in line


def test_bad_task_files_give_one_line_errors(tmp_path):
    (tmp_path / "bad.toml").write_text('name="x"\nitems=["a","b"]\nweights=[0.5,0.6]\nprompt="{items}"\n')
    assert "sum to 1" in one_line_error(run_cli("profile", "--backend", "mock", "--model", "d",
                                                "--task", str(tmp_path / "bad.toml")))
    (tmp_path / "empty.toml").write_text('name="x"\nitems=[]\nweights=[]\nprompt="{items}"\n')
    assert "items" in one_line_error(run_cli("profile", "--backend", "mock", "--model", "d",
                                             "--task", str(tmp_path / "empty.toml")))


def test_unreadable_run_dir_and_reused_out_dir(tmp_path):
    assert "not found" in one_line_error(run_cli("report", str(tmp_path / "missing")))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    assert "damaged" in one_line_error(run_cli("report", str(tmp_path / "junk")))
    out = tmp_path / "r"
    assert run_cli("profile", "--backend", "mock", "--model", "d", "--runs", "1", "--out", str(out)).returncode == 0
    assert "--resume" in one_line_error(run_cli("profile", "--backend", "mock", "--model", "d", "--out", str(out)))


def test_resume_finishes_a_run_from_its_manifest(tmp_path):
    out = tmp_path / "r"
    first = run_json("profile", "--backend", "mock", "--model", "e", "--task", "coin", "--runs", "3",
                     "--out", str(out))
    lines = (out / "steps.jsonl").read_text().splitlines()
    (out / "steps.jsonl").write_text("\n".join(lines[:40]) + "\n")  # lose the last run and a half
    resumed = run_json("profile", "--resume", str(out))
    assert resumed == first
    assert len((out / "steps.jsonl").read_text().splitlines()) == len(lines)


def test_resume_and_report_name_the_command_that_can_finish_a_run(tmp_path):
    sweep = tmp_path / "sweep"
    assert run_cli("sweep", "--backend", "mock", "--model", "e", "--task", "coin", "--temperatures", "1,2",
                   "--runs", "1", "--steps", "2", "--out", str(sweep), "--json").returncode == 0
    assert f"deval sweep --resume {sweep}" in one_line_error(run_cli("profile", "--resume", str(sweep)))
    out = tmp_path / "r"
    assert run_cli("profile", "--backend", "mock", "--model", "d", "--runs", "1", "--out", str(out)).returncode == 0
    (out / "summary.json").unlink()
    assert f"deval profile --resume {out}" in one_line_error(run_cli("report", str(out)))


def test_task_files_with_one_item_or_attribute_placeholders_are_refused(tmp_path):
    (tmp_path / "one.toml").write_text('name="one"\nitems=["a"]\nweights=[1.0]\nprompt="{items}"\n')
    assert "at least two" in one_line_error(run_cli("profile", "--backend", "mock", "--model", "d",
                                                    "--task", str(tmp_path / "one.toml")))
    (tmp_path / "attr.toml").write_text('name="attr"\nitems=["a","b"]\nweights=[0.5,0.5]\nprompt="{items.x}"\n')
    assert "bad placeholder" in one_line_error(run_cli("tasks", "--tasks-dir", str(tmp_path)))
