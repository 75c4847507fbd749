"""The logit lens's output head: a GGUF's final norm and unembedding, applied to any layer as llama.cpp does.

The head is read from the model file with the `gguf` package (deval[layers]): `output_norm.weight` and
`output.weight`, or the tied `token_embd.weight`, dequantised once and cached per model file. Applying it mirrors
the model's own last step: RMSNorm in float32 with the GGUF's epsilon, the normed activation rounded to the type
llama.cpp's CPU matmul converts it to for that weight type (Q8_0 blocks for a Q8_0 matrix, Q8_K for K-quants,
F16 for F16, ...), then the dot product with the dequantised matrix in float64 and a float64 log-softmax. Without
that rounding the lens would miss the model's own log-probabilities by ~0.3 (SmolLM2, Gemma-3 with Q8_0
embeddings); with it, by ~1e-5.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deval.backends.cache import default_cache_dir
from deval.errors import BackendUnavailable, ConfigError

# Architectures whose final step is RMSNorm(output_norm) then the output matrix, with no other transform between
# the last block's output (l_out-<n-1>) and the logits. Gemma-3's GGUF stores its norm weights with the +1
# offset already added (convert_hf_to_gguf) and scales only the input embeddings, so nothing else applies at the
# lens; a final-logit soft-cap is applied when the GGUF states one.
SUPPORTED = ("llama", "gemma3")
# the type llama.cpp's CPU matmul rounds the activation to, per output-matrix type (ggml-cpu type_traits)
DOT_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16", "Q4_0": "q8_0", "Q5_0": "q8_0", "Q8_0": "q8_0",
             "Q4_1": "q8_1", "Q5_1": "q8_1", "Q2_K": "q8_k", "Q3_K": "q8_k", "Q4_K": "q8_k", "Q5_K": "q8_k",
             "Q6_K": "q8_k"}
CACHE_VERSION = 1


@dataclass(frozen=True)
class Head:
    """The final norm and unembedding of one model file, with how llama.cpp applies them."""

    arch: str
    n_layer: int
    eps: float
    norm: np.ndarray  # float32 (n_embd,)
    weight: np.ndarray  # float64 (n_vocab, n_embd), dequantised
    weight_name: str
    weight_type: str
    softcap: float | None = None

    @property
    def dot_type(self) -> str:
        return DOT_TYPES[self.weight_type]

    def describe(self) -> dict:
        return {"arch": self.arch, "n_layer": self.n_layer, "rms_eps": self.eps, "unembedding": self.weight_name,
                "unembedding_type": self.weight_type, "activation_rounding": self.dot_type,
                "final_logit_softcap": self.softcap, "n_vocab": int(self.weight.shape[0]),
                "n_embd": int(self.weight.shape[1])}

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """Logits (float64) for each row of hidden (rows, n_embd): the model's final norm and output matrix."""
        x = np.asarray(hidden, dtype=np.float32)
        # ggml's rms_norm to the last bit: float32 squares summed in double, the mean, epsilon, square root and
        # scale in float32 (one ulp off here can flip an activation's rounding below and move a logit by 1e-2)
        mean = ((x * x).astype(np.float64).sum(axis=1, keepdims=True) / x.shape[1]).astype(np.float32)
        scale = np.float32(1.0) / np.sqrt(mean + np.float32(self.eps))
        normed = (x * scale) * self.norm
        logits = round_activation(normed, self.dot_type) @ self.weight.T
        if self.softcap:
            logits = self.softcap * np.tanh(logits / self.softcap)
        return logits

    def logprobs(self, hidden: np.ndarray) -> np.ndarray:
        """Log-softmax (float64) over the vocabulary for each row of hidden."""
        z = self.logits(hidden)
        z -= z.max(axis=1, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
        return z


def round_activation(x: np.ndarray, dot_type: str) -> np.ndarray:
    """x (float32 rows) as llama.cpp's CPU matmul sees it for a weight of this dot type, in float64."""
    if dot_type == "f32":
        return x.astype(np.float64)
    if dot_type == "f16":
        return x.astype(np.float16).astype(np.float64)
    if dot_type == "bf16":
        u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16  # round to nearest even (ggml_fp32_to_bf16)
        return u.astype(np.uint32).view(np.float32).astype(np.float64)
    rows, n = x.shape
    if dot_type in ("q8_0", "q8_1"):
        b = x.reshape(rows, n // 32, 32)
        amax = np.abs(b).max(axis=2, keepdims=True)
        with np.errstate(divide="ignore"):
            inv = np.where(amax > 0, np.float32(127.0) / amax, np.float32(0.0)).astype(np.float32)
        q = np.round(b * inv)  # x86 kernels: round half to even, id = 127 / amax
        d = (amax / np.float32(127.0)).astype(np.float16).astype(np.float64)  # the block scale is stored as F16
        return (q * d).reshape(rows, n)
    if dot_type == "q8_k":
        b = x.reshape(rows, n // 256, 256)
        idx = np.abs(b).argmax(axis=2)[..., None]
        signed_max = np.take_along_axis(b, idx, axis=2)
        with np.errstate(divide="ignore"):
            iscale = np.where(signed_max != 0, np.float32(-127.0) / signed_max, np.float32(0.0)).astype(np.float32)
        q = np.minimum(127, np.round(iscale * b))
        d = np.where(iscale != 0, np.float32(1.0) / np.where(iscale != 0, iscale, 1), 0).astype(np.float32)
        return (q * d.astype(np.float64)).reshape(rows, n)
    raise ValueError(dot_type)


def _field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def read_head(path: Path, cache_dir: Path | None = None) -> Head:
    """The lens head of a GGUF; a one-line error for an architecture or a file the lens cannot read.

    Read once per model file, then from the cache (~/.cache/deval/lens): parsing a GGUF's metadata in Python
    and dequantising its unembedding take seconds."""
    path = Path(path)
    cache = _cache_path(path, cache_dir)
    head = _load_cached(cache)
    if head is not None:
        return head
    try:
        import gguf
    except ImportError:
        raise BackendUnavailable("deval layers needs the gguf package: pip install 'deval[layers]'") from None
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise ConfigError(f"the lens cannot read {path} as GGUF ({exc}); pass a complete .gguf model") from None
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED:
        raise ConfigError(f"the logit lens does not know the final norm of architecture {arch!r} ({path.name}); "
                          f"it supports {', '.join(SUPPORTED)}")
    tensors = {t.name: t for t in reader.tensors}
    weight_name = "output.weight" if "output.weight" in tensors else "token_embd.weight"
    missing = [n for n in ("output_norm.weight", weight_name) if n not in tensors]
    if missing:
        raise ConfigError(f"{path.name} has no {' or '.join(missing)}; the logit lens needs the final norm and "
                          f"the output (or tied token_embd) matrix")
    n_layer, eps = _field(reader, f"{arch}.block_count"), _field(reader, f"{arch}.attention.layer_norm_rms_epsilon")
    if n_layer is None or eps is None:
        raise ConfigError(f"{path.name} lacks {arch}.block_count or {arch}.attention.layer_norm_rms_epsilon; "
                          f"the logit lens reads the layer count and the RMSNorm epsilon from the GGUF")
    w = tensors[weight_name]
    wtype = w.tensor_type.name
    if wtype not in DOT_TYPES:
        raise ConfigError(f"{path.name}: the lens does not know how llama.cpp multiplies a {wtype} output matrix; "
                          f"it supports {', '.join(DOT_TYPES)}")
    norm_t = tensors["output_norm.weight"]
    norm = gguf.quants.dequantize(norm_t.data, norm_t.tensor_type).astype(np.float32).reshape(-1)
    weight = gguf.quants.dequantize(w.data, w.tensor_type).astype(np.float32)  # exact dequantised values
    if weight.ndim != 2 or weight.shape[1] != norm.shape[0]:
        raise ConfigError(f"{path.name}: {weight_name} {weight.shape} does not match output_norm {norm.shape}")
    softcap = _field(reader, f"{arch}.final_logit_softcapping")
    meta = {"arch": arch, "n_layer": int(n_layer), "eps": float(eps), "weight_name": weight_name,
            "weight_type": wtype, "softcap": float(softcap) if softcap else None}
    _save_cached(cache, meta, norm, weight)
    return Head(norm=norm, weight=weight.astype(np.float64), **meta)


def _cache_path(path: Path, cache_dir: Path | None) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{CACHE_VERSION}"
    return (cache_dir or default_cache_dir()) / "lens" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".npz")


def _load_cached(cache: Path) -> Head | None:
    if not cache.exists():
        return None
    try:
        with np.load(cache) as z:
            meta = json.loads(str(z["meta"]))
            return Head(norm=z["norm"], weight=z["weight"].astype(np.float64), **meta)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged cache file is rebuilt


def _save_cached(cache: Path, meta: dict, norm: np.ndarray, weight: np.ndarray) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), norm=norm, weight=weight)
        tmp.replace(cache)
    except OSError:
        pass  # an unwritable cache costs time, not correctness
