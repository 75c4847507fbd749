"""Tiny exact models with hand-written vocabularies and known next-token probabilities."""

import itertools
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


class FakeTrieBackend:
    """A backend whose items take several tokens ("10" is "1" "0", or " " "10", ...), for exact sweep tests.

    Its next-token rows depend only on (run seed, step, token path), never on what was sampled, so P_token at any
    temperature re-tempered from the T=1 record equals what a run at that temperature measures, at every step.
    `measure` computes p_t(item) by brute force over every token sequence (no trie walk), independently of
    deval.analyses.sweep's chain rule.
    """

    name = "fake-trie"
    model = "fake-trie"
    exact = True
    TOKENS = [",", "1", "2", "3", "0", " ", "10", "x"]
    SPELLINGS = {"1": [(1,), (5, 1)], "2": [(2,), (5, 2)], "3": [(3,), (5, 3)],
                 "10": [(1, 4), (5, 1, 4), (6,), (5, 6)]}

    def describe(self):
        return {"name": self.name, "model": self.model, "exact": True}

    def close(self):
        pass

    def row(self, seed: int, step: int, path: tuple) -> np.ndarray:
        rng = np.random.default_rng(zlib.crc32(repr((seed % 2**32, step, path)).encode()))
        logits = rng.normal(0, 1.5, len(self.TOKENS))
        return logits - np.logaddexp.reduce(logits)

    def trie(self, items):
        children, ends = {}, {}
        for i, item in enumerate(items):
            for spelling in self.SPELLINGS[item]:
                for d in range(len(spelling)):
                    children.setdefault(spelling[:d], set()).add(spelling[d])
                ends[spelling] = i
        return children, ends

    def brute_force(self, items, seed: int, step: int, temperature: float) -> np.ndarray:
        """p(item) = total probability of the token sequences whose deepest trie node reached spells it."""
        children, ends = self.trie(items)
        depth = max(len(s) for spellings in self.SPELLINGS.values() for s in spellings)
        probs = np.zeros(len(items))
        for seq in itertools.product(range(len(self.TOKENS)), repeat=depth):
            logq, node = 0.0, ()
            for d, tok in enumerate(seq):
                z = self.row(seed, step, seq[:d]) / temperature
                logq += z[tok] - np.logaddexp.reduce(z)
            for d in range(depth + 1):
                if d and seq[d - 1] not in children.get(seq[:d - 1], ()):
                    break
                node = seq[:d]
            if node in ends:
                probs[ends[node]] += np.exp(logq)
        return probs

    def measure(self, runs):
        from deval.core.protocol import Step, TrieLogprobs

        for spec in runs:
            rng = np.random.default_rng(spec.seed)
            children, ends = self.trie(spec.task.items)
            for t in range(spec.steps):
                probs = self.brute_force(spec.task.items, spec.seed, t, spec.temperature)
                choice = int(rng.choice(len(probs) + 1, p=np.append(probs, max(0.0, 1 - probs.sum()))))
                sampled = choice if choice < len(probs) else None
                record = None
                if spec.derive_temperatures:
                    rows = {node: self.row(spec.seed, t, node) for node in children}
                    record = TrieLogprobs.from_rows(children, ends, rows, spec.derive_temperatures)
                yield Step(task=spec.task.name, run=spec.run, step=t, probs=tuple(probs.tolist()), sampled=sampled,
                           text="" if sampled is None else spec.task.items[sampled], final=t == spec.steps - 1,
                           trie_logprobs=record)
