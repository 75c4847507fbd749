"""Runs decoded together on the local backend: the prompt once per profile, R runs per llama_decode (issue 17).

Each run gets a KV sequence of its own in a second llama.cpp context, with one KV stream per sequence (kv_unified
off), so what a run reads does not depend on the runs beside it. Two rules keep its numbers the same
bits as decoding it alone (tests/test_local_batch.py compares them):
- a run's chunk of new tokens is decoded whole: llama.cpp splits a batch whose sequences bring unequal chunks, and
  a split chunk moves the numbers in their last bits, so runs are grouped by chunk length;
- a run's first decode (its prompt, from an empty cache) is done once in sequence 0 and copied to the run's
  sequence (llama_memory_seq_cp): the same cache and rows as decoding it again, for the cost of a copy.
`backend` is a deval.backends.local.LocalBackend throughout.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass
from typing import Iterator

from deval.backends import llama_load  # noqa: F401  (before llama_cpp: the OpenMP wait policy)

import llama_cpp  # noqa: E402
import numpy as np  # noqa: E402
from llama_cpp import _internals  # noqa: E402
from llama_cpp._utils import suppress_stdout_stderr  # noqa: E402

from deval.core.answers import answer_budget
from deval.core.protocol import RunSpec, Step
from deval.core.sampling import log_softmax
from deval.errors import BackendError

MAX_BATCH = 32  # runs per decode by default: on a CPU the gain flattens out well before this
KV_BUDGET = 1 << 30  # bytes of KV cache the default batch may take
CTX_ROUND = 256


@dataclass(frozen=True)
class Decode:
    """A decode a run needs: `new` after the first n_past tokens of its sequence; rows from index first_wanted on."""

    n_past: int
    new: list[int]
    first_wanted: int


def kv_bytes_per_token(backend) -> int:
    """Bytes of K and V cache one token takes (f16, every layer)."""
    model = backend.llm._model.model
    n_layer, n_embd = llama_cpp.llama_model_n_layer(model), llama_cpp.llama_model_n_embd(model)
    n_head, n_head_kv = llama_cpp.llama_model_n_head(model), llama_cpp.llama_model_n_head_kv(model)
    return 2 * n_layer * (n_embd // max(n_head, 1)) * n_head_kv * 2


def rounded(n: int) -> int:
    """Tokens rounded up to a multiple of 256, as llama.cpp pads a context."""
    return -(-n // CTX_ROUND) * CTX_ROUND


def seq_tokens(backend, runs: list[RunSpec]) -> int:
    """Tokens one run's sequence can need: its prompt, the most it generates and the deepest item spelling."""
    need = 0
    for spec in {(s.task.name, s.mode, s.steps, s.positions): s for s in runs}.values():  # one per kind of run
        trie = backend.item_trie(spec.task.matcher)
        depth = max((len(path) for path in trie.ends), default=1)
        if spec.positions == "constrained":
            written = spec.limit * (depth + len(backend.tokenize(spec.task.separator)))
        else:
            written = answer_budget(spec.task.items, spec.limit)
        need = max(need, len(backend.answer_tokens(spec)) + written + depth + 2)
    return min(rounded(need), rounded(backend.n_ctx))  # a run longer than the context stops in _evaluate


def default_batch(backend, n_runs: int, per_seq: int) -> int:
    """Runs decoded together unless --batch says: all of them up to MAX_BATCH, within KV_BUDGET of cache."""
    fits = KV_BUDGET // max(per_seq * kv_bytes_per_token(backend), 1)
    return int(max(1, min(n_runs, MAX_BATCH, fits)))


class SeqPool:
    """A llama.cpp context of `seqs` run sequences (ids 1..seqs) and sequence 0, which holds the last prompt."""

    def __init__(self, backend, seqs: int, per_seq: int):
        self.backend, self.seqs, self.per_seq = backend, seqs, per_seq
        params = llama_cpp.llama_context_params.from_buffer_copy(backend.llm.context_params)
        params.n_seq_max, params.kv_unified, params.n_ctx = seqs + 1, False, per_seq * (seqs + 1)
        try:
            with suppress_stdout_stderr(disable=backend.llm.verbose):
                self.ctx = _internals.LlamaContext(model=backend.llm._model, params=params, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"llama.cpp could not make a context for {seqs} runs of {per_seq} tokens ({exc}); "
                               f"lower --batch") from None
        self.memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self.n_batch = params.n_batch
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.prompt: tuple | None = None  # (tokens, first_wanted) decoded in sequence 0, and its rows
        self.prompt_rows: list[np.ndarray] = []

    def start(self, seq: int, req: Decode) -> list[np.ndarray]:
        """A run's first decode: its prompt, decoded in sequence 0 unless it is already there, copied to `seq`."""
        key = (tuple(req.new), req.first_wanted)
        if self.prompt != key:
            llama_cpp.llama_memory_seq_rm(self.memory, 0, -1, -1)
            self.prompt_rows, self.prompt = self._decode_alone(0, req), key
        llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)
        llama_cpp.llama_memory_seq_cp(self.memory, 0, seq, -1, -1)
        return self.prompt_rows

    def decode(self, group: list[tuple[int, Decode]]) -> list[list[np.ndarray]]:
        """One llama_decode for runs whose chunks have the same length (or one long chunk in pieces)."""
        if len(group) == 1 and len(group[0][1].new) > self.n_batch:
            return [self._decode_alone(*group[0])]
        b, wanted = self.batch, []
        b.n_tokens = 0
        for seq, req in group:
            llama_cpp.llama_memory_seq_rm(self.memory, seq, req.n_past, -1)
            for i, tok in enumerate(req.new):
                j = b.n_tokens
                b.token[j], b.pos[j], b.n_seq_id[j], b.seq_id[j][0] = tok, req.n_past + i, 1, seq
                b.logits[j] = i >= req.first_wanted
                b.n_tokens += 1
            wanted.append(range(j - len(req.new) + 1 + req.first_wanted, j + 1))
        self._run_decode()
        return [[self._row(j) for j in js] for js in wanted]

    def _decode_alone(self, seq: int, req: Decode) -> list[np.ndarray]:
        """One run's chunk in pieces of n_batch, as the main context decodes it (LocalBackend._decode)."""
        rows = []
        for start in range(0, len(req.new), self.n_batch):
            piece = Decode(req.n_past + start, req.new[start:start + self.n_batch], max(0, req.first_wanted - start))
            rows += self.decode([(seq, piece)])[0]
        return rows

    def _run_decode(self) -> None:
        code = llama_cpp.llama_decode(self.ctx.ctx, self.batch)
        if code != 0:
            raise BackendError(f"llama.cpp decode failed with code {code} (batched runs: try --batch 1)")
        self.backend.evals += 1

    def _row(self, j: int) -> np.ndarray:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx.ctx, j), shape=(self.backend.n_vocab,))
        return log_softmax(logits)

    def close(self) -> None:
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        self.ctx.close()


def pool_for(backend, n_works: int, per_seq: int) -> SeqPool:
    """The backend's pool, made (again) when the work needs more sequences or longer ones than it has."""
    seqs = backend.batch or default_batch(backend, n_works, per_seq)
    pool = backend._pool
    if pool is None or pool.seqs < seqs or pool.per_seq < per_seq:
        if pool is not None:
            pool.close()
        pool = backend._pool = SeqPool(backend, seqs, per_seq)
    return pool


def measure_batched(backend, runs: list[RunSpec]) -> Iterator[Step]:
    """Every run's steps, in order within a run (any order across runs)."""
    if runs:
        yield from together(pool_for(backend, len(runs), seq_tokens(backend, runs)), map(backend._run, runs))


def together(pool: SeqPool, works: Iterator) -> Iterator:
    """What the works (generators of Decode requests and results) yield: up to pool.seqs in flight, each waiting
    work's decode answered in a batch with the other waiting works whose chunk has the same length (the largest such
    group first)."""
    todo = deque(works)
    free = list(range(pool.seqs, 0, -1))
    waiting: dict[int, tuple] = {}  # sequence -> (its run, the Decode it waits for)

    def advance(seq: int, run, rows) -> Iterator:
        """Run `run` until it needs a decode from the batch (it then waits) or ends (its sequence is freed)."""
        while True:
            try:
                out = run.send(rows)
            except StopIteration:
                free.append(seq)
                return
            rows = None
            if not isinstance(out, Decode):
                yield out
            elif out.n_past == 0:
                rows = pool.start(seq, out)
            else:
                waiting[seq] = (run, out)
                return

    while todo or waiting:
        while todo and free:
            seq = free.pop()
            yield from advance(seq, todo.popleft(), None)
        if not waiting:
            continue
        by_length: dict[int, list[int]] = defaultdict(list)
        for seq, (_, req) in waiting.items():
            by_length[len(req.new)].append(seq)
        length, seqs = max(by_length.items(), key=lambda kv: (len(kv[1]), -kv[0]))
        seqs = seqs[: max(1, pool.n_batch // length)]
        rows = pool.decode([(seq, waiting[seq][1]) for seq in seqs])
        for seq, r in zip(seqs, rows):
            run, _ = waiting.pop(seq)
            yield from advance(seq, run, r)
