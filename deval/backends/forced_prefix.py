"""Rows at token paths a text-only server would tokenize otherwise (llama-cpp-python's completions route; issue 11).

A model may write a text as other tokens than its tokenizer would ("Hello" letter by letter). Sent as text, such a
prefix reaches the server as the tokenizer's tokens, and the row there is another row. So deval sends the longest
prefix that the server does tokenize as deval's path, and has the server generate the rest of the path itself:
a grammar holds the generated text to the rest's text, and a logit bias on the rest's tokens picks them among the
spellings the grammar allows. Each generated token is decoded alone on the prefix the server holds, as in-process,
and the row after the path is the logprobs of the token generated after it (llama-cpp-python computes logprobs
from the model's logits, before the bias and the grammar).

The request has no `min_tokens`: llama-cpp-python 0.3 then drops the logit bias (`LogitsProcessorList.extend`
returns None). Every answer is checked: where another forced token won a step (both fit the text there), the
wanted token's bias is raised past it and the prefix asked again; a prefix no bias reaches is left unreached, and
the caller falls back to the text (flagged `retokenized`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

from deval.backends.http import Refused
from deval.backends.logprobs import Token
from deval.backends.native import decided_draw
from deval.backends.vocab import Vocab
from deval.errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from deval.backends.http import Transport

BIAS = 100.0  # on the forced tokens: the grammar allows the text, the bias picks deval's spelling of it
MAX_FORCED = 48  # tokens generated to reach one prefix (each answer carries one row per generated token)
SLACK = 1e-5  # of the mass: the server's float32 row against the in-process row, both summing to 1
TRIES = 4  # answers per prefix, each raising a bias where another forced token won a step
MARGIN = 30.0  # nats a forced token's biased logit must lead another forced token by, where they met
LIGHT = 1000  # rows this long first: an answer writes a row per generated token, each costing the server per entry


def gbnf_literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= code < 127:
            out.append(ch)
        else:
            out.append(f"\\x{code:02X}" if code < 0x80 else f"\\u{code:04X}" if code < 0x10000 else f"\\U{code:08X}")
    return '"' + "".join(out) + '"'


def split(vocab: Vocab, text: str, tokens: list[int], retokenized: Callable[[str, list[int]], bool]):
    """(head text, forced tokens): the longest proper prefix of `tokens` whose text the server tokenizes as that
    prefix, and the rest of the path (whole characters). None where no such prefix lies within MAX_FORCED tokens."""
    for k in range(len(tokens) - 1, max(0, len(tokens) - MAX_FORCED - 1), -1):
        try:
            rest = b"".join(vocab.piece(t) for t in tokens[k:]).decode("utf-8")
        except UnicodeDecodeError:  # the cut falls inside a character, or the path ends inside one
            continue
        if not text.endswith(rest):
            continue
        head = text[: len(text) - len(rest)]
        if head and not retokenized(head, tokens[:k]):
            return head, tokens[k:]
    return None


def solve(raise_by: dict[int, float], wins: list[tuple[int, int, float]]) -> dict[int, float] | None:
    """The least bias raises with raise[a] >= raise[b] + d for every (a, b, d) (difference constraints, by
    Bellman-Ford relaxation), None where they contradict each other."""
    out = dict.fromkeys(raise_by, 0.0)
    wins = [(a, b, d) for a, b, d in wins if a in out and b in out]  # the others' tokens are not biased here
    for _ in range(len(out) + 1):
        changed = False
        for a, b, d in wins:
            if out[a] < out[b] + d:
                out[a], changed = out[b] + d, True
        if not changed:
            return out
    return None


class ForcedPrefixes:
    """Rows at prefixes the server would tokenize otherwise, reached by generating the path's tail."""

    def __init__(self, backend, vocab: Vocab):
        self.backend = backend
        self.vocab = vocab
        self.works: bool | None = None  # the server takes the grammar and the bias (None: untried)
        self.unreached: set[tuple[int, ...]] = set()  # prefixes no forced answer reached
        self.asked = 0  # forced requests made (or answered by the response cache)
        # the rows of the latest answers, by top-k and prefix: an answer holds the row after each forced token
        self.memo: dict[int, dict[tuple[int, ...], Token]] = {}
        self.wins: dict[tuple[int, ...], list[tuple[int, int, float]]] = {}  # bias constraints by head

    def reached(self, tokens: list[int]) -> bool:
        """A row asked at this prefix was the row after deval's path."""
        return self.works is True and tuple(tokens) not in self.unreached

    async def row(self, transport: "Transport", body: dict, text: str, tokens: list[int],
                  retokenized: Callable[[str, list[int]], bool], fresh: bool = False) -> Token | None:
        """The logprobs after `tokens` (`body`: the one-token row request at the text), None where the prefix
        cannot be reached (the caller then asks at the text)."""
        top = body["logprobs"]
        if tuple(tokens) in self.memo.get(top, {}):
            return self.memo[top][tuple(tokens)]
        cut = split(self.vocab, text, tokens, retokenized) if self.works is not False else None
        if cut is None:
            self.unreached.add(tuple(tokens))
            return None
        head, forced = cut
        grammar = self._grammar(forced)
        body = {k: v for k, v in body.items() if k != "min_tokens"} | {
            "prompt": head, "max_tokens": len(forced) + 1, "grammar": grammar}
        # (a, b, d): a's bias must exceed b's by d, learned on answers from this head (a run's later prefixes
        # force longer tails from the same head)
        wins = self.wins.setdefault(tuple(tokens[: len(tokens) - len(forced)]), [])
        raise_by = solve(dict.fromkeys(sorted(set(forced)), 0.0), wins)
        for _ in range(TRIES if raise_by is not None else 0):
            bias = {str(t): BIAS + extra for t, extra in raise_by.items()}
            choice = await self._ask(transport, body | {"logit_bias": bias}, fresh)
            if choice is None:
                break
            wrong = next((i for i, want in enumerate(forced) if i >= len(choice.tokens)
                          or not self._same(choice.tokens[i], want)), None)
            if wrong is None and len(choice.tokens) > len(forced):
                return self._keep(top, tokens, forced, choice.tokens)
            if wrong is None or wrong >= len(choice.tokens):  # it stopped (wrote the end of text)
                break
            # another forced token (which the grammar allows there too) won at `wrong`: raise the wanted one's bias
            lost = self._values(choice.tokens[wrong], forced[wrong])
            if lost is None or lost[0] not in raise_by:
                break
            wins.append((forced[wrong], lost[0], lost[1] + MARGIN))
            raise_by = solve(raise_by, wins)
            if raise_by is None:
                break
        self.unreached.add(tuple(tokens))
        return None

    def _grammar(self, forced: list[int]) -> str:
        """The forced text, then anything (one more token is generated, for its row) that does not start with
        another forced token's text running on past the last forced token's (the grammar would allow it there)."""
        last = self.vocab.text(forced[-1:])
        after = {text[len(last)] for t in set(forced) for text in [self.vocab.text([t])]
                 if len(text) > len(last) and text.startswith(last)}
        banned = "".join(f"\\u{ord(c):04X}" if ord(c) < 0x10000 else f"\\U{ord(c):08X}" for c in sorted(after))
        return f"root ::= {gbnf_literal(self.vocab.text(forced))} ([^\\x00{banned}] [^\\x00]*)?"

    async def _ask(self, transport: "Transport", body: dict, fresh: bool):
        """One forced answer, None where the server refuses grammars or biases (known after the first)."""
        self.asked += 1
        try:
            choice = (await self.backend._fetch(transport, "completions", body, 1, fresh))[0]
        except (Refused, BackendError):
            if self.works:
                raise
            self.works = False
            return None
        self.works = True
        return choice

    def _keep(self, top: int, tokens: list[int], forced: list[int], rows: tuple[Token, ...] | list[Token]) -> Token:
        """The row after `tokens`; the answer's rows after each forced token are kept for the next asks."""
        start = len(tokens) - len(forced)
        self.memo.pop(top, None)
        self.memo[top] = {tuple(tokens[: start + i]): rows[i] for i in range(1, len(forced) + 1)}
        while len(self.memo) > 2:  # the whole rows' and the light rows' answers
            self.memo.pop(next(iter(self.memo)))
        return rows[len(forced)]

    def _values(self, got: Token, want: int) -> tuple[int, float] | None:
        """(the token the server wrote, its logprob less the wanted token's) at a step, None where the row does not
        name both."""
        wrote = self.vocab.token_id(got.key, got.raw)
        key = "t:" + self.vocab.piece(want).decode("utf-8", "ignore")
        value = next((a.logprob for a in got.top if a.key == key), None)
        if wrote is None or value is None or key[2:] in self.vocab.ambiguous or not math.isfinite(value):
            return None
        return wrote, got.logprob - value

    def light_draw(self, token: Token, u: float) -> int | None:
        """deval's draw at uniform u where the entries that name one token decide it (wherever the rest of the row's
        mass lies), else None. llama-cpp-python's logprobs are a float32 log-softmax (numpy's pairwise sum): the row
        sums to 1 within SLACK."""
        seen, mass = self.vocab.visible_row(token, trusted=True)
        rest = max(0.0, 1.0 - mass) + SLACK
        return decided_draw(seen, u, self.vocab.n_vocab, given=rest)

    def _same(self, got: Token, want: int) -> bool:
        """The server's generated token is `want` (by id, or by its text where several tokens share it)."""
        text = self.vocab.piece(want).decode("utf-8", "ignore")
        if got.key.startswith("t:") and got.key[2:] in self.vocab.ambiguous:
            return got.key[2:] == text
        return self.vocab.token_id(got.key, got.raw) == want
