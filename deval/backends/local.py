"""Local GGUF backend through llama-cpp-python: exact next-token distributions over the whole vocabulary.

deval evaluates tokens itself, reads the last row(s) of logits, takes log-softmax in float64, and samples from
that exact distribution with the run's seeded generator. The KV cache is reused within a run: each item step feeds
only its new tokens, and the trie's branch tokens ride along in the same batch.

A run is a generator (`_run`) that yields the decodes it needs (`Decode`) and the steps it measured; a driver
answers the decodes. `measure` drives runs together (deval.backends.local_batch: the prompt decoded once and copied
to each run's sequence, R runs per llama_decode); `_drive` answers them one run at a time on the main context (the
lens). Both give the same bits: a run's decodes and their schedule depend only on the run.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

# llama_load first: it sets llama.cpp's OpenMP wait policy before llama_cpp loads. The loading names stay
# importable from here (deval.backends.local.open_llama, embedded_model_path, ...).
from deval.backends.llama_load import (DEFAULT_CTX, EMBEDDED_NAME, EMBEDDED_PACKAGE, FLASH_ATTN_DEFAULT,  # noqa: F401
                                       check_ctx, check_model_file, embedded_model_path, llama_cpp, open_llama,
                                       plain_cpu_kernels, usable_cpus)

import numpy as np  # noqa: E402
from llama_cpp import Llama, llama_chat_format  # noqa: E402
from deval.backends.local_batch import Decode, measure_batched
from deval.core.answers import Matcher, answer_budget, find_positions
from deval.core.protocol import GenerateSpec, RunSpec, Step, TrieLogprobs
from deval.errors import BackendError, ConfigError
from deval.core.sampling import draw, log_softmax, sampling_logprobs
from deval.core.trie import ItemTrie, chain_rule, end_paths, item_logprobs, pick_path  # noqa: F401

CACHE_ROWS = 256  # logprob rows kept for recently evaluated prefixes


@dataclass
class RunState:
    """One run's KV sequence as the run sees it: the tokens cached, in order, and log-softmax rows by prefix."""

    kv: list[int] = field(default_factory=list)
    rows: OrderedDict = field(default_factory=OrderedDict)


class LocalBackend:
    """A GGUF model in-process. `model` None means the embedded SmolLM2-135M-Instruct (Q4_1)."""

    name = "local"
    exact = True
    OPTIONS = ("gpu_layers", "threads", "ctx", "raw_prompt", "batch", "flash_attn")

    def __init__(self, model: str | None = None, gpu_layers: int | None = None, threads: int | None = None,
                 ctx: int | None = None, raw_prompt: bool = False, batch: int | None = None,
                 flash_attn: bool | str | None = None):
        path = check_model_file(Path(model)) if model else embedded_model_path()
        self.model = str(path)
        self.gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
        self.gpu_layers = gpu_layers if gpu_layers is not None else (-1 if self.gpu_offload else 0)
        self.raw_prompt = raw_prompt
        self.flash_attn = FLASH_ATTN_DEFAULT if flash_attn is None else flash_attn in (True, "on")
        self.batch = batch  # runs decoded together by measure(); None: chosen from the model and the runs
        self._pool = None  # deval.backends.local_batch.SeqPool, made by the first measure()
        if ctx and ctx > DEFAULT_CTX:
            check_ctx(path, ctx)
        try:
            self.llm = self._open(path, threads=threads, n_gpu_layers=self.gpu_layers,
                                  n_ctx=ctx or DEFAULT_CTX, logits_all=False, verbose=False,
                                  flash_attn=self.flash_attn)
        except (ValueError, RuntimeError) as exc:
            if ctx and ctx > DEFAULT_CTX:  # the model loads at the default size: the context did not fit
                raise ConfigError(f"llama.cpp could not make a {ctx}-token context for {path} ({exc}); lower --ctx "
                                  f"(e.g. --ctx 2048, or drop it for the default)") from None
            raise ConfigError(f"llama.cpp could not load {path} ({exc}); check that the GGUF is complete "
                              f"and of an architecture this llama-cpp-python supports") from None
        self.n_vocab = self.llm.n_vocab()
        self.n_ctx = min(self.llm.n_ctx(), len(self.llm.input_ids))  # llama.cpp pads n_ctx; input_ids does not
        self._pieces = [self.llm.detokenize([i]) for i in range(self.n_vocab)]
        self._formatter = self._chat_formatter()
        vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        self._eog = frozenset(i for i in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i))
        self._kv: list[int] = []  # tokens in the main context's cache, in order (next_logprobs, generate)
        self._tries: dict[tuple[str, ...], ItemTrie] = {}
        self._prompts: set[tuple[int, ...]] = set()  # prompts next_logprobs decodes as one batch
        self._base: tuple[int, ...] | None = None  # the prompt decoded that way, now in the KV cache
        self.evals = 0  # decode calls, for benchmarks

    # -- the exact-distribution interface (used by calibration too) --------------------------------------

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def eog_tokens(self) -> list[int]:
        """End-of-generation tokens (EOS, end of turn): llama.cpp's is_eog over the vocabulary."""
        return sorted(self._eog)

    def token_bytes(self, token_id: int) -> bytes:
        return self._pieces[token_id]

    def prompt_tokens(self, prompt: str) -> list[int]:
        """The prompt as the model sees it: through the GGUF's chat template unless raw_prompt is set."""
        if self._formatter is None:
            return self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        text = self._formatter(messages=[{"role": "user", "content": prompt}]).prompt
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        self._prompts.add(tuple(tokens))
        return tokens

    def next_logprobs(self, tokens: Sequence[int]) -> np.ndarray:
        """Exact log-softmax (float64) over the whole vocabulary for the token after `tokens`.

        The answer does not depend on earlier calls: llama.cpp's numbers move (up to ~1e-2 in probability on
        SmolLM2 Q4_1) with how tokens were split into batches, so the decode schedule is fixed. A prompt from
        prompt_tokens() is decoded as one batch from an empty cache and kept; whatever follows it is decoded as
        one batch on top of it, each call.
        """
        tokens = tuple(tokens)
        base = max((p for p in self._prompts if tokens[:len(p)] == p), key=len, default=())
        if not base or tokens == base:
            row = self._decode(0, list(tokens), len(tokens) - 1)[0]
            self._kv, self._base = list(tokens), base or None
            return row
        if self._kv[:len(base)] != list(base) or self._base != base:
            self._decode(0, list(base), len(base) - 1)
            self._base = base
        row = self._decode(len(base), list(tokens[len(base):]), len(tokens) - len(base) - 1)[0]
        self._kv = list(base)
        return row

    # -- the backend protocol --------------------------------------------------------------------------

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model, "exact": True, "n_vocab": self.n_vocab,
                "n_ctx": self.n_ctx, "gpu_layers": self.gpu_layers, "gpu_offload_supported": self.gpu_offload,
                "flash_attn": self.flash_attn,
                "chat_template": self._formatter is not None,
                "eog_tokens": sorted(self._eog), "llama_cpp_python": llama_cpp.__version__,
                "model_bytes": Path(self.model).stat().st_size}

    def measure(self, runs: Sequence[RunSpec]) -> Iterator[Step]:
        """The runs' steps, R runs at a time (deval.backends.local_batch); the same numbers as one at a time."""
        yield from measure_batched(self, list(runs))

    def _drive(self, work):
        """One run (or any of its generators: _evaluate, _measure, ...) on the main context, its decodes answered
        one by one (as before batching; the lens uses it): yields what the work yields besides Decodes and returns
        the work's own return value."""
        self._kv, self._base = [], None  # the main context's cache will hold this work: next_logprobs starts afresh
        rows = None
        while True:
            try:
                out = work.send(rows)
            except StopIteration as done:
                return done.value
            rows = None
            if isinstance(out, Decode):
                rows = self._decode(out.n_past, out.new, out.first_wanted)
            else:
                yield out

    def _complete(self, work):
        """The return value of a generator that yields only Decodes (_evaluate, _measure, ...), on the main context."""
        try:
            next(self._drive(work))
        except StopIteration as done:
            return done.value
        raise BackendError("a decode-only generator yielded a result")

    def generate(self, specs: Sequence[GenerateSpec]) -> Iterator[tuple[int, str]]:
        """Free text from deval's own seeded sampler over the exact distribution (deval.backends.local_generate)."""
        from deval.backends.local_generate import generate

        yield from generate(self, specs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self.llm.close()

    # -- internals -------------------------------------------------------------------------------------

    def _open(self, path: Path, **kwargs) -> Llama:
        """The Llama this backend evaluates with (deval.backends.lens adds its layer capture here)."""
        return open_llama(path, **kwargs)

    def _decoded(self, batch_index: list[int]) -> None:
        """Called after each decode with the batch indices whose logits were read (a hook for the lens)."""

    def _chat_formatter(self):
        template = self.llm.metadata.get("tokenizer.chat_template")
        if self.raw_prompt or not template:
            return None
        eos, bos = self.llm.token_eos(), self.llm.token_bos()
        return llama_chat_format.Jinja2ChatFormatter(
            template=template, eos_token=self._pieces[eos].decode("utf-8", "replace") if eos >= 0 else "",
            bos_token=self._pieces[bos].decode("utf-8", "replace") if bos >= 0 else "")

    def item_trie(self, matcher: Matcher) -> ItemTrie:
        """Every token sequence that spells an item under the task's matching rule: the item's forms tokenised
        (bare and after a space), and every single token whose text spells an item ("7", " 7", ",7", "Heads")."""
        key = (matcher.items, matcher.separator, matcher.matching)
        if key not in self._tries:
            trie = ItemTrie()
            for spelling, i in matcher.spellings():
                trie.add(self.tokenize(spelling), i)
            for tok, piece in enumerate(self._pieces):
                i = matcher.item(piece)
                if i is not None:
                    trie.add([tok], i)
            self._tries[key] = trie
        return self._tries[key]

    def _evaluate(self, state: RunState, tokens: tuple[int, ...], lookahead: tuple[int, ...] = ()):
        """Log-softmax rows after `tokens` and after each prefix of tokens + lookahead (cached per prefix); a
        generator that yields the Decode it needs.

        Lookahead tokens are evaluated in the same batch and stay in the KV cache: when the next step's item
        starts with them (SmolLM2 writes " 7" as " " + "7"), they are not decoded again. A prefix's row is the
        one first computed in the run (a position's row is the row its token was drawn from): only rows not
        held are decoded, on top of the held prefix, as a server's prompt cache decodes a request.
        """
        wanted = [tokens + lookahead[:i] for i in range(len(lookahead) + 1)]
        first = next((i for i, w in enumerate(wanted) if w not in state.rows), None)
        if first is None:
            for w in wanted:
                state.rows.move_to_end(w)
            return [state.rows[w] for w in wanted]
        full = list(tokens + lookahead)
        if len(full) >= self.n_ctx:
            raise ConfigError(f"the run needs {len(full)} tokens but the context holds {self.n_ctx}; "
                              f"raise --ctx or lower --steps")
        need = len(tokens) + first  # the first row not held: its prefix's last token is decoded (at least)
        common = 0
        limit = min(len(state.kv), need - 1)
        while common < limit and state.kv[common] == full[common]:
            common += 1
        rows = yield Decode(common, full[common:], need - 1 - common)
        state.kv = full
        for w, row in zip(wanted[first:], rows):
            state.rows.setdefault(w, row)
        for w in wanted:
            state.rows.move_to_end(w)
        held = [state.rows[w] for w in wanted]
        while len(state.rows) > CACHE_ROWS:
            state.rows.popitem(last=False)
        return held

    def _decode(self, n_past: int, new: list[int], first_wanted: int) -> list[np.ndarray]:
        """Decode `new` after n_past cached tokens; return log-softmax rows from index first_wanted on."""
        llm = self.llm
        llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
        rows: list[np.ndarray] = []
        n_batch = llm.n_batch
        for start in range(0, len(new), n_batch):
            chunk = new[start:start + n_batch]
            llm._batch.set_batch(batch=chunk, n_past=n_past + start, logits_all=False)
            wanted = [i for i in range(len(chunk)) if start + i >= first_wanted]
            for i in wanted:
                llm._batch.batch.logits[i] = True
            code = llm._ctx.decode(llm._batch)
            if code not in (None, 0):
                raise BackendError(f"llama.cpp decode failed with code {code}")
            self.evals += 1
            self._decoded(wanted)
            for i in wanted:
                logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(i), shape=(self.n_vocab,))
                rows.append(log_softmax(logits))
        llm.n_tokens = n_past + len(new)
        llm.input_ids[n_past:n_past + len(new)] = new
        return rows

    def _item_distribution(self, state: RunState, context: tuple[int, ...], trie: ItemTrie, spec: RunSpec,
                           root_rows: list[np.ndarray]):
        """p_t(item) under the sampling distribution, by the chain rule down the trie.

        An item that is also a prefix of another item ('1' and '10') counts only the mass that does not go on
        into the longer item. Returns the item probabilities, the sampling log-probs at each trie node and the
        T=1 log-probs at each trie node (a generator, like _evaluate).
        """
        lookahead = trie.lookahead()
        node_rows = {lookahead[:i]: row for i, row in enumerate(root_rows)}
        dists: dict[tuple[int, ...], np.ndarray] = {}
        for node in [()] + trie.interior():
            row = node_rows.get(node)
            if row is None:
                row = node_rows[node] = (yield from self._evaluate(state, context + node))[0]
            dists[node] = sampling_logprobs(row, spec.temperature, spec.filters)
        probs = chain_rule(trie.children, trie.ends, lambda node, tok: float(np.exp(dists[node][tok])),
                           len(spec.task.items))
        return probs, dists, node_rows

    def answer_tokens(self, spec: RunSpec) -> tuple[int, ...]:
        """The prompt with the answer started: the chat template's assistant turn opened and the task's cue written
        (prefill); a model without a chat template (or --raw-prompt) gets the completion-style prompt."""
        if self._formatter is None:
            return tuple(self.llm.tokenize(spec.completion.encode("utf-8"), add_bos=True, special=False))
        text = self._formatter(messages=[{"role": "user", "content": spec.prompt}]).prompt + spec.task.cue
        return tuple(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def _measure(self, state: RunState, spec: RunSpec, trie: ItemTrie, context: tuple[int, ...], step: int,
                 item: int | None, text: str, flags: tuple[str, ...], final: bool = False):
        """The Step at one item position (its context ends just before the position's token), and the sampling
        log-probs at each trie node (a generator, like _evaluate)."""
        rows = yield from self._evaluate(state, context, trie.lookahead())
        probs, dists, node_rows = yield from self._item_distribution(state, context, trie, spec, rows)
        record = (TrieLogprobs.from_rows(trie.children, trie.ends, node_rows, spec.derive_temperatures)
                  if spec.derive_temperatures else None)
        return Step(task=spec.task.name, run=spec.run, step=step, probs=tuple(probs.tolist()), sampled=item,
                    text=text, final=final, flags=flags, trie_logprobs=record,
                    item_logprobs=item_logprobs(trie, rows[0], len(spec.task.items))), dists

    def _generate(self, state: RunState, spec: RunSpec, context: tuple[int, ...], rng: np.random.Generator):
        """Free mode: the model writes its answer token by token under the run's temperature and filters until the
        protocol says the answer ended (deval.core.answers), an end-of-generation token, or the token budget."""
        matcher = spec.task.matcher
        generated: list[int] = []
        pieces: list[bytes] = []
        cut = True
        while len(generated) < answer_budget(spec.task.items, spec.limit):
            if len(context) + len(generated) + 1 >= self.n_ctx:
                break
            row = (yield from self._evaluate(state, context + tuple(generated)))[0]
            tok = draw(sampling_logprobs(row, spec.temperature, spec.filters), rng)
            if tok in self._eog:
                cut = False
                break
            generated.append(tok)
            pieces.append(self._pieces[tok])
            if answer_positions(pieces, matcher, spec.limit, cut=True).ended:
                cut = False
                break
        return generated, answer_positions(pieces, matcher, spec.limit, cut=cut)

    def _run(self, spec: RunSpec):
        """One run: yields each Decode it needs (and takes its rows back) and each Step it measured.

        Each run starts from an empty cache of its own, so its numbers do not depend on which runs came before it or
        run beside it (llama.cpp's kernels differ between batch sizes in the last bits): bit-for-bit reproducible
        runs, also across --resume.
        """
        state = RunState()
        rng = np.random.default_rng(spec.seed)
        trie = self.item_trie(spec.task.matcher)
        context = self.answer_tokens(spec)
        if spec.positions == "constrained":
            yield from self._run_constrained(state, spec, trie, context, rng)
            return
        steps: list[Step] = []
        for _ in range(1 if spec.mode == "sequence" else spec.steps):
            generated, answer = yield from self._generate(state, spec, context, rng)
            chosen = answer.positions[: spec.steps - len(steps)]
            measured = []
            # last position first: each position's trie rows are decoded on top of the generation's own cache
            # (one token on a held prefix), the schedule a server's prompt cache follows (stepper.py)
            for k, pos in reversed(list(enumerate(chosen))):
                measured.append((yield from self._measure(state, spec, trie, context + tuple(generated[:pos.token]),
                                                          len(steps) + k, pos.item, pos.text, answer.flags))[0])
            for step in reversed(measured):
                steps.append(step)
                if len(steps) > 1:
                    yield steps[-2]
            if not answer.positions and not steps and spec.mode == "sequence":  # nothing written: measure the start
                steps.append((yield from self._measure(state, spec, trie, context, 0, None, "",
                                                       answer.flags + ("empty-output",)))[0])
        if not steps:
            steps.append((yield from self._measure(state, spec, trie, context, 0, None, "", ("empty-output",)))[0])
        short = ("short-run",) if len(steps) < spec.steps else ()
        last = steps[-1]
        yield Step(**{**last.__dict__, "final": True, "flags": tuple(dict.fromkeys(last.flags + short))})

    def _run_constrained(self, state: RunState, spec: RunSpec, trie: ItemTrie, context: tuple[int, ...],
                         rng: np.random.Generator):
        """Constrained mode: at every position the draw is restricted to the item spellings (renormalised), the
        separator follows; the unconstrained item probabilities (and so the on-set mass) are what is recorded."""
        separator = tuple(self.tokenize(spec.task.separator))
        for t in range(spec.steps):
            step, dists = yield from self._measure(state, spec, trie, context, t, None, "", ("constrained",),
                                                   final=t == spec.steps - 1)
            path, item = pick_path(end_paths(trie, dists), rng)
            text = b"".join(self._pieces[tok] for tok in path).decode("utf-8", "replace")
            yield Step(**{**step.__dict__, "sampled": item, "text": text})
            if spec.mode == "sequence":
                context = context + path + separator


def answer_positions(pieces: Sequence[bytes], matcher: Matcher, limit: int, cut: bool = False):
    """The local backend's item positions: the protocol's one function (deval.core.answers.find_positions)."""
    return find_positions(pieces, matcher, limit, cut)
