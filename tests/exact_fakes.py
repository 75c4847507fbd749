"""A tiny exact model with a hand-written vocabulary and known next-token probabilities."""

import zlib

import numpy as np

VOCAB = [b"", b"\n", b".", b" ", b"a", b"e", b"i", b"o", b"u", b"x", b"ae", b" a", b"1", b"2", b"3", b"7",
         b"11", b"13", b"Q", b"ou"]


class FakeExact:
    """next_logprobs is a fixed pseudo-random function of the prefix, skewed toward token `favourite`."""

    n_vocab = len(VOCAB)

    def __init__(self, favourite: bytes = b"a", sharpness: float = 2.0):
        self.favourite = VOCAB.index(favourite)
        self.sharpness = sharpness
        self.calls = 0

    def prompt_tokens(self, prompt):
        return [VOCAB.index(b"Q")]

    def tokenize(self, text):
        data, out = text.encode(), []
        while data:
            best = max((i for i, v in enumerate(VOCAB) if v and data.startswith(v)), key=lambda i: len(VOCAB[i]))
            out.append(best)
            data = data[len(VOCAB[best]):]
        return out

    def token_bytes(self, token_id):
        return VOCAB[token_id]

    def next_logprobs(self, tokens):
        self.calls += 1
        rng = np.random.default_rng(zlib.crc32(bytes(str(list(tokens)), "ascii")))
        logits = rng.normal(0, 1, len(VOCAB))
        logits[self.favourite] += self.sharpness
        if len(tokens) > 1:
            logits[0] += 3.0  # after the first answer token, ending is likely
        return logits - np.logaddexp.reduce(logits)
