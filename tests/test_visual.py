"""Figures, HTML reports (opened in a real headless Chromium), deval compare, the Python API, start-up imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, one_line_error, run_cli, run_json

matplotlib = pytest.importorskip("matplotlib", reason="figures need matplotlib: pip install -e '.[plots]'")
import headless  # noqa: E402  (tests/headless.py)

needs_chromium = pytest.mark.skipif(headless.chromium() is None,
                                    reason="needs the chromium browser (Debian: apt-get install chromium)")
HEAVY = ("scipy", "llama_cpp", "openai", "matplotlib")


def coloured_pixels(png: Path) -> int:
    """Pixels with a clear hue: data (lines, bars, heat cells); axes, ticks and text are grey."""
    from PIL import Image

    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(((img.max(axis=-1) - img.min(axis=-1)) > 60).sum())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("visual")
    paths = {"profile": base / "profile", "sweep": base / "sweep"}
    assert run_cli("profile", "--backend", "mock", "--model", "d", "--runs", "6", "--out",
                   str(paths["profile"])).returncode == 0
    assert run_cli("sweep", "--backend", "mock", "--model", "e", "--task", "extreme", "--runs", "4", "--steps", "10",
                   "--temperatures", "0.5,1,2", "--out", str(paths["sweep"])).returncode == 0
    return paths


@needs_chromium
@pytest.mark.parametrize("kind", ["profile", "sweep"])
def test_html_report_renders_in_chromium_without_network(runs, kind, tmp_path):
    page = tmp_path / f"{kind}.html"
    proc = run_cli("report", str(runs[kind]), "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text()
    assert "<script" not in text.lower() and "<link" not in text.lower()  # nothing to fetch, nothing to run
    png, requests = headless.screenshot(page)
    (tmp_path / f"{kind}.png").write_bytes(png)
    schemes = {url.split(":", 1)[0] for url in requests}
    assert page.resolve().as_uri() in requests and schemes <= {"file", "data"}, requests
    assert [u for u in requests if u.startswith("file:")] == [page.resolve().as_uri()]  # the page, nothing else
    inked, colours = headless.ink(png)
    assert inked > 0.02 and colours > 100, (inked, colours)  # not a blank page: text, tables and figures drawn
    assert coloured_pixels(tmp_path / f"{kind}.png") > 1000  # the figures drew (a page without them has ~0)


def test_every_figure_png_has_plot_content(runs, tmp_path):
    for kind, expected in (("profile", {"heat-extreme", "steps-extreme", "heat-flat", "steps-flat", "verdict"}),
                           ("sweep", {"sweep-extreme"})):
        out = tmp_path / kind
        assert run_cli("report", str(runs[kind]), "--plots", str(out)).returncode == 0
        assert {p.stem for p in out.glob("*.png")} == expected == {p.stem for p in out.glob("*.svg")}
        for png in out.glob("*.png"):
            assert coloured_pixels(png) > 500, png.name  # plotted data, not an empty canvas or bare axes


def test_blank_figure_fails_the_content_check(tmp_path):
    from deval.report.plots import new_figure, save_figures

    fig, axes = new_figure()
    axes[0, 0].set_title("empty axes")
    save_figures([("blank", fig)], tmp_path)
    assert coloured_pixels(tmp_path / "blank.png") == 0


def test_compare_finds_the_model_difference_and_not_the_seed(tmp_path):
    for name, model, seed in (("d", "d", 0), ("e", "e", 0), ("e1", "e", 1)):
        run_json("profile", "--backend", "mock", "--model", model, "--runs", "10", "--seed", str(seed),
                 "--out", str(tmp_path / name))
    differ = run_json("compare", str(tmp_path / "d"), str(tmp_path / "e"), "--html", str(tmp_path / "c.html"))
    same = run_json("compare", str(tmp_path / "e"), str(tmp_path / "e1"))
    for task in ("extreme", "flat"):
        d = differ["tasks"][task]["metrics"]["atvd"]["differences"][0]
        assert d["significant"] and d["ci"][1] < 0 < d["ci"][1] - d["ci"][0] + 1  # E's ATVD is lower, CI excludes 0
        s = same["tasks"][task]["metrics"]["atvd"]["differences"][0]
        assert not s["significant"] and s["ci"][0] <= 0 <= s["ci"][1]
    assert differ["config_differences"]["model"] == ["d", "e"] and "seed" in same["config_differences"]
    assert [r["verdict"]["type"] for r in differ["runs"]] == ["D", "E"]
    assert "<svg" in (tmp_path / "c.html").read_text()


def test_compare_per_run_values_match_the_summary_means(tmp_path):
    from deval.analyses.compare import per_run_values
    import deval

    r = deval.profile(model="e", backend="mock", tasks=["extreme"], runs=5, steps=12, out=tmp_path / "r")
    ctx = r.context()
    values = per_run_values(ctx["tasks"]["extreme"], ctx["steps"])
    for key, v in values.items():
        assert np.nanmean(v) == pytest.approx(r.summary["tasks"]["extreme"][key]["mean"], abs=1e-12), key


def test_compare_refuses_runs_without_a_common_task(tmp_path):
    run_json("profile", "--backend", "mock", "--model", "d", "--task", "coin", "--runs", "2", "--out",
             str(tmp_path / "a"))
    run_json("profile", "--backend", "mock", "--model", "d", "--task", "flat", "--runs", "2", "--out",
             str(tmp_path / "b"))
    assert "no task in common" in one_line_error(run_cli("compare", str(tmp_path / "a"), str(tmp_path / "b")))


def test_api_gives_the_cli_summary_for_the_same_seed(tmp_path):
    import deval

    cli = run_json("profile", "--backend", "mock", "--model", "e", "--task", "coin", "--runs", "4", "--seed", "7",
                   "--out", str(tmp_path / "cli"))
    assert cli.pop("run_dir") == str(tmp_path / "cli")
    r = deval.profile(model="e", backend="mock", tasks=["coin"], runs=4, seed=7, out=tmp_path / "api")
    assert r.summary == cli and r.verdict == cli["verdict"] and r.path == tmp_path / "api"
    assert deval.load(r.path).summary == cli
    steps = r.steps
    assert len(steps) == 4 * r.summary["tasks"]["coin"]["positions"] // 4
    sweep_cli = run_json("sweep", "--backend", "mock", "--model", "e", "--task", "coin", "--runs", "2",
                         "--temperatures", "0.5,1", "--out", str(tmp_path / "scli"))
    sweep_cli.pop("run_dir")
    s = deval.sweep(model="e", backend="mock", tasks=["coin"], runs=2, temperatures=[0.5, 1], out=tmp_path / "sapi")
    assert s.summary == sweep_cli and s.verdict == sweep_cli["verdicts"]
    figs = r.plot(tmp_path / "figs")
    assert len(figs) == 3 and len(list((tmp_path / "figs").glob("*.png"))) == 3


def test_api_rejects_an_unknown_option():
    import deval
    from deval.errors import ConfigError

    with pytest.raises(ConfigError, match="takes no 'bogus'"):
        deval.profile(model="e", backend="mock", bogus=1)


@pytest.mark.parametrize("args", [["--help"], ["tasks"]])
def test_start_up_imports_nothing_heavy(args):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "deval.cli.main", *args], capture_output=True,
                          text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines()
              if line.startswith("import time:")}
    assert "deval" in loaded and not loaded & set(HEAVY), loaded & set(HEAVY)


def test_version_and_json_run_dir(tmp_path):
    from deval.version import __version__

    assert run_cli("--version").stdout.strip() == f"deval {__version__}"
    summary = run_json("profile", "--backend", "mock", "--model", "d", "--task", "coin", "--runs", "2",
                       "--out", str(tmp_path / "r"))
    assert summary["run_dir"] == str(tmp_path / "r") and json.loads((tmp_path / "r" / "summary.json").read_text())


def test_plain_output_when_not_a_terminal(tmp_path):
    proc = run_cli("profile", "--backend", "mock", "--model", "d", "--out", str(tmp_path / "r"))
    assert proc.returncode == 0 and "\x1b[" not in proc.stdout + proc.stderr  # no colour codes, no bar in a pipe
    assert "verdict: D" in proc.stdout and "legend: e-score" in proc.stdout


def test_calibration_and_diversity_figures_and_pages(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from deval import backends as registry
    from deval.cli.main import app
    from test_cli_dynamics import FakeBackend

    monkeypatch.setattr(registry, "backend_class", lambda name: FakeBackend)
    monkeypatch.setattr(registry, "create", lambda name, model, **o: FakeBackend(model))
    task = tmp_path / "fake.toml"
    task.write_text('name = "fake"\nkind = "valid-set"\nmembers = ["a", "ae", "o", "11", "13"]\nprompt = "pick"\n')
    import deval

    runner = CliRunner()
    api = {"calibration": lambda out: deval.calibration(tasks=[str(task)], samples=10, top_ks=[1, 3], top_ps=[0.9],
                                                        min_ps=[0.1], out=out),
           "diversity": lambda out: deval.diversity(model="a", compare=["e"], task=str(task), samples=20, out=out)}
    for kind, args in (("calibration", ["--samples", "10", "--top-ks", "1,3", "--top-ps", "0.9", "--min-ps", "0.1"]),
                       ("diversity", ["--samples", "20", "--model", "a", "--compare", "e"])):
        run = tmp_path / kind
        r = runner.invoke(app, [kind, "--task", str(task), *args, "--out", str(run), "--json"])
        assert r.exit_code == 0, r.output
        cli = json.loads(r.stdout)
        assert cli.pop("run_dir") == str(run)
        assert api[kind](tmp_path / f"{kind}-api").summary == cli  # the API runs the CLI's own functions
        r = runner.invoke(app, ["report", str(run), "--plots", str(tmp_path / f"{kind}-figs"), "--html",
                                str(tmp_path / f"{kind}.html")])
        assert r.exit_code == 0, r.output
        pngs = list((tmp_path / f"{kind}-figs").glob("*.png"))
        assert pngs and all(coloured_pixels(p) > 500 for p in pngs)
        page = (tmp_path / f"{kind}.html").read_text()
        assert page.count("<svg") == len(pngs) and "<script" not in page


def test_progress_counts_every_record_and_resumes_part_way(tmp_path):
    import deval

    calls = []
    r = deval.profile(model="e", backend="mock", tasks=["coin"], runs=3, steps=4, out=tmp_path / "r",
                      progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 12) and calls[-1] == (12, 12) and len(calls) == 13
    lines = (r.path / "steps.jsonl").read_text().splitlines()
    (r.path / "steps.jsonl").write_text("\n".join(lines[:8]) + "\n")  # two of three runs finished
    (r.path / "summary.json").unlink()
    calls.clear()
    again = deval.profile(resume=r.path, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (8, 12) and calls[-1] == (12, 12) and again.summary == r.summary
