"""Free-text generation on the local backend: deval's own seeded sampler over the exact distribution.

Each token's row is the exact float64 log-softmax; temperature and filters act on it through
deval.core.sampling and one draw from numpy.random.default_rng(spec.seed) picks the token. The decode schedule is
fixed (the prompt as one batch from an empty cache, then one token per decode), so a spec's text depends only on
the spec, not on what was generated before it or beside it. Specs are generated together like a profile's runs
(deval.backends.local_batch): a prompt is decoded once and copied to each spec's sequence, and the specs' next
tokens share one decode.
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
    """Yield (index, text) for each spec as it finishes."""
    from deval.backends.local_batch import pool_for, rounded, together

    for spec in specs:
        check(spec)
    if not specs:
        return
    ends = end_tokens(backend)
    prompts = [prompt_for(backend, spec) for spec in specs]
    for prompt, spec in zip(prompts, specs):
        if len(prompt) + spec.max_tokens >= backend.n_ctx:
            raise ConfigError(f"the prompt ({len(prompt)} tokens) and max_tokens ({spec.max_tokens}) do not fit the "
                              f"context of {backend.n_ctx} tokens; raise --ctx or lower --max-tokens")
    per_seq = rounded(max(len(p) + s.max_tokens + 1 for p, s in zip(prompts, specs)))
    pool = pool_for(backend, len(specs), per_seq)
    yield from together(pool, (_sample(backend, i, s, p, ends) for i, (s, p) in enumerate(zip(specs, prompts))))


def _sample(backend, index: int, spec: GenerateSpec, prompt: tuple[int, ...], ends: frozenset[int]):
    """One generation: yields the decodes it needs (deval.backends.local.Decode), then (index, text)."""
    from deval.backends.local_batch import Decode

    rng = np.random.default_rng(spec.seed)
    row = (yield Decode(0, list(prompt), len(prompt) - 1))[0]
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
                yield index, text
                return
        if produced + 1 == spec.max_tokens:
            break
        row = (yield Decode(n_past, [token], 0))[0]  # drops any cache entries past n_past first
        n_past += 1
    yield index, out.decode("utf-8", "replace")
