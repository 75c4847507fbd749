"""A GGUF's tokenizer for the HTTP routes that walk runs step by step (deval.backends.stepper): token pieces, ids of
the texts a server returns, end-of-generation tokens and the chat template, loaded vocab-only (no weights)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from deval.core.protocol import RunSpec

if TYPE_CHECKING:  # pragma: no cover
    from deval.backends.logprobs import Token


class Vocab:
    """A GGUF's tokenizer, token pieces and chat template, loaded vocab-only (no weights)."""

    def __init__(self, path: str):
        from pathlib import Path

        from deval.backends.local import LocalBackend, check_model_file, open_llama

        import llama_cpp

        self.llm = open_llama(check_model_file(Path(path)), vocab_only=True, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        model_vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        self.eog = frozenset(i for i in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(model_vocab, i))
        self._pieces = [self.llm.detokenize([i]) for i in range(self.n_vocab)]
        self._tries: dict = {}
        self.raw_prompt = False
        self._formatter = LocalBackend._chat_formatter(self)
        self.by_text: dict[str, int] = {}
        self.by_bytes: dict[bytes, int] = {}
        shared: dict[str, list[int]] = {}
        for i, piece in enumerate(self._pieces):
            self.by_bytes.setdefault(piece, i)
            shared.setdefault(piece.decode("utf-8", "replace"), []).append(i)
        for text, ids in shared.items():  # a text several tokens spell (" " and the byte token <0x20>): the one
            canonical = self.tokenize(text) if len(ids) > 1 else ids  # the tokenizer writes for it, as servers do
            self.by_text[text] = canonical[0] if len(canonical) == 1 and canonical[0] in ids else ids[0]
        # texts a text-keyed server (llama-cpp-python decodes each token with errors="ignore") gets from several
        # tokens: b" \xe2" shows as " " too, and the last of them overwrites the value of " "
        spelled: dict[str, int] = {}
        for piece in self._pieces:
            text = piece.decode("utf-8", "ignore")
            spelled[text] = spelled.get(text, 0) + 1
        self.ambiguous = frozenset(text for text, n in spelled.items() if n > 1)
        self._item_trie = LocalBackend.item_trie
        self._answer_tokens = LocalBackend.answer_tokens

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def item_trie(self, matcher):
        return self._item_trie(self, matcher)

    def piece(self, token: int) -> bytes:
        return self._pieces[token]

    def text(self, tokens) -> str:
        return b"".join(self._pieces[t] for t in tokens).decode("utf-8", "replace")

    def prompt(self, spec: RunSpec) -> tuple[str, list[int]]:
        """The prompt as the local backend builds it (LocalBackend.answer_tokens: the chat template's assistant turn
        opened and the task's cue prefilled; the completion-style prompt without a template), and its text."""
        tokens = list(self._answer_tokens(self, spec))
        if self._formatter is None:
            return spec.completion, tokens
        return self._formatter(messages=[{"role": "user", "content": spec.prompt}]).prompt + spec.task.cue, tokens

    def token_id(self, key: str, raw: bytes) -> int | None:
        if key.startswith("id:"):
            return int(key[3:])
        if key.startswith("b:"):
            return self.by_bytes.get(raw)
        return self.by_text.get(key[2:])

    def visible_row(self, token: "Token", trusted: bool = False) -> tuple[dict[int, float], float]:
        """Token id -> T=1 logprob of every visible candidate at one position, and their total mass. trusted: only
        the entries whose text names one token (a text several tokens spell holds the value of another of them)."""
        seen: dict[int, float] = {}
        for alt in [*token.top, token]:
            if trusted and alt.key.startswith("t:") and alt.key[2:] in self.ambiguous:
                continue
            i = self.token_id(alt.key, alt.raw)
            if i is not None and math.isfinite(alt.logprob):
                seen.setdefault(i, alt.logprob)
        return seen, float(sum(math.exp(v) for v in seen.values()))

    def close(self) -> None:
        self.llm.close()
