"""Free-text generation on the local backend: deval's own seeded sampler over the exact distribution.

Each token's row is the exact float64 log-softmax; temperature and filters act on it through
deval.core.sampling and one draw from numpy.random.default_rng(spec.seed) picks the token. The decode schedule is
fixed (the prompt as one batch from an empty cache, then one token per decode), so a spec's text depends only on
the spec, not on what was generated before it; consecutive specs with the same prompt reuse its cache entries.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import llama_cpp.llama_cpp as llama_lib
import numpy as np

from deval.core.protocol import GenerateSpec, cut_at_stop
from deval.core.sampling import draw, sampling_logprobs
from deval.errors import ConfigError


def end_tokens(backend) -> frozenset[int]:
    """Tokens that end a generation: the vocabulary's end-of-generation set (EOS, EOT, <|im_end|>, ...)."""
    llm = backend.llm
    vocab = llm._model.vocab
    ends = {t for t in range(backend.n_vocab) if llama_lib.llama_vocab_is_eog(vocab, t)}
    if llm.token_eos() >= 0:
        ends.add(llm.token_eos())
    return frozenset(ends)


def prompt_for(backend, spec: GenerateSpec) -> tuple[int, ...]:
    """The prompt's tokens: through the chat template unless the spec (or the backend) is raw."""
    if spec.raw or backend._formatter is None:
        return tuple(backend.llm.tokenize(spec.prompt.encode("utf-8"), add_bos=True, special=False))
    return tuple(backend.prompt_tokens(spec.prompt))


def check(spec: GenerateSpec) -> None:
    if spec.max_tokens < 1:
        raise ConfigError(f"max_tokens must be >= 1 (got {spec.max_tokens})")
    if not spec.temperature > 0:
        raise ConfigError(f"temperature must be > 0 for sampling (got {spec.temperature})")


def generate(backend, specs: Sequence[GenerateSpec]) -> Iterator[tuple[int, str]]:
    """Yield (index, text) for each spec in order."""
    for spec in specs:
        check(spec)
    ends = end_tokens(backend)
    prompt_row: tuple[tuple[int, ...], np.ndarray] | None = None
    for index, spec in enumerate(specs):
        prompt = prompt_for(backend, spec)
        if len(prompt) + spec.max_tokens >= backend.n_ctx:
            raise ConfigError(f"the prompt ({len(prompt)} tokens) and max_tokens ({spec.max_tokens}) do not fit the "
                              f"context of {backend.n_ctx} tokens; raise --ctx or lower --max-tokens")
        if prompt_row is None or prompt_row[0] != prompt:
            row = backend._decode(0, list(prompt), len(prompt) - 1)[0]
            prompt_row = (prompt, row)
        yield index, _sample(backend, spec, prompt, prompt_row[1], ends)
    backend._kv, backend._base = [], None  # the cache now holds a generation: measure() starts afresh


def _sample(backend, spec: GenerateSpec, prompt: tuple[int, ...], row: np.ndarray, ends: frozenset[int]) -> str:
    rng = np.random.default_rng(spec.seed)
    out = bytearray()
    n_past = len(prompt)
    for produced in range(spec.max_tokens):
        token = draw(sampling_logprobs(row, spec.temperature, spec.filters), rng)
        if token in ends:
            break
        out += backend.token_bytes(token)
        if spec.stop:
            text, stopped = cut_at_stop(out.decode("utf-8", "ignore"), spec.stop)
            if stopped:
                return text
        if produced + 1 == spec.max_tokens:
            break
        row = backend._decode(n_past, [token], 0)[0]  # drops any cache entries past n_past first
        n_past += 1
    return out.decode("utf-8", "replace")
