"""The logit lens over a local GGUF model: every layer's residual stream at the item positions, read through the
model's own final norm and unembedding (deval.backends.lens_head).

LensBackend is the local backend with llama.cpp's eval callback set: the decode that gives a position's final
logits also hands over each layer's output (`l_out-<il>`) at that position, so the lens sees exactly the pass
the profile measures: the same prompts, item positions, draws and decode schedule as `deval profile`.
"""

from __future__ import annotations

import ctypes
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import llama_cpp.llama_cpp as llama_lib
import numpy as np

from deval.backends.lens_head import Head, read_head
from deval.backends.local import LocalBackend, check_model_file, embedded_model_path, open_llama
from deval.core.protocol import RunSpec, Step
from deval.core.sampling import sampling_logprobs
from deval.core.trie import chain_rule
from deval.errors import BackendError

LAYER_PREFIX = "l_out-"


@dataclass(frozen=True)
class LayerStep:
    """One item position seen through the lens: p_t(item) at every layer, and the last layer's agreement.

    probs[l][i] is item i's probability under the sampling distribution (temperature and filters applied) when
    layer l's output goes through the final norm and unembedding; `check` is the largest absolute difference
    between the last layer's lens log-probabilities and the model's own, over the vocabulary and the positions.
    """

    probs: tuple[tuple[float, ...], ...]
    check: float


def _ggml():
    from llama_cpp import _ggml as g
    lib = g.libggml
    lib.ggml_get_name.restype, lib.ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
    for fn in ("ggml_nelements", "ggml_nrows"):
        getattr(lib, fn).restype, getattr(lib, fn).argtypes = ctypes.c_int64, [ctypes.c_void_p]
    lib.ggml_nbytes.restype, lib.ggml_nbytes.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


class LayerCapture:
    """llama.cpp's eval callback: copies each layer's output (f32 rows) as the graph computes it."""

    def __init__(self, n_layer: int):
        self.n_layer = n_layer
        self._lib = _ggml()
        self.ubatches: list[dict[int, np.ndarray]] = []  # per graph evaluation: layer -> rows
        self.error: str | None = None
        self.callback = llama_lib.ggml_backend_sched_eval_callback(self._on_tensor)  # kept alive here

    def _on_tensor(self, tensor, ask, _user) -> bool:
        try:
            name = self._lib.ggml_get_name(tensor).decode("utf-8", "replace")
            if ask:
                return name.startswith(LAYER_PREFIX)
            if not name.startswith(LAYER_PREFIX):
                return True
            layer = int(name[len(LAYER_PREFIX):])
            n, rows = self._lib.ggml_nelements(tensor), self._lib.ggml_nrows(tensor)
            if self._lib.ggml_nbytes(tensor) != 4 * n:
                self.error = f"{name} is not float32"
                return True
            buf = np.empty(n, dtype=np.float32)
            self._lib.ggml_backend_tensor_get(tensor, buf.ctypes.data, 0, buf.nbytes)
            if layer == 0 or not self.ubatches:
                self.ubatches.append({})
            self.ubatches[-1][layer] = buf.reshape(rows, n // rows)
        except Exception as exc:  # an exception must not cross into C
            self.error = f"{type(exc).__name__}: {exc}"
        return True

    def take(self, batch_index: Sequence[int]) -> np.ndarray:
        """(len(batch_index), n_layer, n_embd) for the batch rows whose logits were read; clears the buffers.

        Layers before the last hold every token of a ubatch; the last holds only the output rows when llama.cpp
        dropped the others before its final block (inp_out_ids), in batch order."""
        if self.error:
            raise BackendError(f"the lens could not read a layer output: {self.error}")
        wanted = sorted(batch_index)
        per_layer: list[list[np.ndarray]] = [[] for _ in range(self.n_layer)]
        offset = 0
        for ub in self.ubatches:
            if sorted(ub) != list(range(self.n_layer)):
                raise BackendError(f"the lens saw layers {sorted(ub)} of {self.n_layer} in one evaluation")
            size = ub[0].shape[0]
            here = [i - offset for i in wanted if offset <= i < offset + size]
            for layer, rows in ub.items():
                per_layer[layer].append(rows[here] if rows.shape[0] == size else rows)
            offset += size
        self.ubatches = []
        stacked = [np.concatenate(p) if p else np.zeros((0, 0), np.float32) for p in per_layer]
        if any(s.shape[0] != len(wanted) for s in stacked):
            raise BackendError("the lens got a different number of rows than logits were read")
        order = [wanted.index(i) for i in batch_index]
        return np.stack(stacked, axis=1)[order]


@contextmanager
def eval_callback(capture: LayerCapture):
    """Contexts created inside get the capture as their eval callback (Llama() does not expose the field)."""
    default = llama_lib.llama_context_default_params

    def params():
        p = default()
        p.cb_eval = capture.callback
        p.cb_eval_user_data = None
        return p

    llama_lib.llama_context_default_params = params
    try:
        yield
    finally:
        llama_lib.llama_context_default_params = default


def model_path(model: str | None) -> Path:
    return check_model_file(Path(model)) if model else embedded_model_path()


class LensBackend(LocalBackend):
    """The local backend, plus every layer's item distribution at each measured position (measure_layers)."""

    def __init__(self, model: str | None = None, head: Head | None = None, **options):
        self.head = head or read_head(model_path(model))  # before loading: an unsupported file fails fast
        self._capture = LayerCapture(self.head.n_layer)
        self._fresh: list[np.ndarray] | None = None
        self._hidden: dict[tuple[int, ...], np.ndarray] = {}
        self._layer_step: LayerStep | None = None
        self._layer_steps: dict[tuple[str, int, int], LayerStep] = {}  # the current run's, by (task, run, step)
        super().__init__(model, **options)
        if self.head.weight.shape[0] != self.n_vocab:
            raise BackendError(f"the lens's output matrix has {self.head.weight.shape[0]} rows but the model "
                               f"{self.n_vocab} tokens")

    def describe(self) -> dict:
        return {**super().describe(), "lens": self.head.describe()}

    def measure_layers(self, runs: Sequence[RunSpec]) -> Iterator[tuple[Step, LayerStep]]:
        """Each step of each run as `measure` yields it, with its layer-by-layer view."""
        for spec in runs:
            self._layer_steps = {}
            for step in self._drive(self._run(spec)):  # a step comes after the next is measured: pair by position
                yield step, self._layer_steps.pop((step.task, step.run, step.step))

    def lens_rows(self, hidden: np.ndarray) -> np.ndarray:
        """(positions, n_layer, n_vocab) lens log-probabilities for hidden (positions, n_layer, n_embd)."""
        p, n_layer, n_embd = hidden.shape
        return self.head.logprobs(hidden.reshape(p * n_layer, n_embd)).reshape(p, n_layer, -1)

    # -- hooks into the local backend ---------------------------------------------------------------------

    def _measure(self, state, spec, trie, context, step, item, text, flags, final=False):
        out = yield from super()._measure(state, spec, trie, context, step, item, text, flags, final)
        self._layer_steps[(spec.task.name, spec.run, step)] = self._layer_step
        return out

    def _open(self, path: Path, **kwargs):
        with eval_callback(self._capture):
            return open_llama(path, **kwargs)

    def _decode(self, n_past: int, new: list[int], first_wanted: int) -> list[np.ndarray]:
        self._fresh, self._capture.ubatches = [], []
        return super()._decode(n_past, new, first_wanted)

    def _decoded(self, batch_index: list[int]) -> None:
        self._fresh.extend(self._capture.take(batch_index))

    def _evaluate(self, state, tokens: tuple[int, ...], lookahead: tuple[int, ...] = ()):
        self._fresh = None
        rows = yield from super()._evaluate(state, tokens, lookahead)
        self._rows = state.rows  # the current run's rows, beside its layers
        if self._fresh is not None:  # decoded now: the last rows asked; a prefix keeps the layers of its row
            offset = len(lookahead) + 1 - len(self._fresh)
            for i, hidden in enumerate(self._fresh):
                self._hidden.setdefault(tokens + lookahead[:offset + i], hidden)
        for key in [k for k in self._hidden if k not in state.rows]:
            del self._hidden[key]
        return rows

    def _item_distribution(self, state, context, trie, spec, root_rows):
        probs, dists, node_rows = yield from super()._item_distribution(state, context, trie, spec, root_rows)
        nodes = list(node_rows)
        lens = self.lens_rows(np.stack([self._hidden[context + n] for n in nodes]))
        check = max(float(np.max(np.abs(lens[i, -1] - node_rows[n]))) for i, n in enumerate(nodes))
        per_layer = []
        for layer in range(self.head.n_layer):
            d = {n: sampling_logprobs(lens[i, layer], spec.temperature, spec.filters) for i, n in enumerate(nodes)}
            p = chain_rule(trie.children, trie.ends, lambda node, tok: float(np.exp(d[node][tok])),
                           len(spec.task.items))
            per_layer.append(tuple(float(x) for x in p))
        self._layer_step = LayerStep(probs=tuple(per_layer), check=check)
        return probs, dists, node_rows
