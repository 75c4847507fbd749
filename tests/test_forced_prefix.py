"""Rows at token paths a text-only server would tokenize otherwise (deval.backends.forced_prefix): the grammar and
bias of the request, the bias raised where another forced token won a step, and the split of a path."""

import asyncio

import pytest

from conftest import needs_model
from deval.backends.forced_prefix import BIAS, MARGIN, ForcedPrefixes, gbnf_literal, solve, split
from deval.backends.logprobs import Alt, Choice, Token


def test_gbnf_literal_escapes_quotes_backslashes_and_every_non_ascii_character():
    assert gbnf_literal('a"b\\c') == '"a\\"b\\\\c"'
    assert gbnf_literal("\n\t") == '"\\x0A\\x09"'
    assert gbnf_literal("é🕴") == '"\\u00E9\\U0001F574"'


def test_solve_meets_every_constraint_with_the_least_raises_and_refuses_a_contradiction():
    out = solve({1: 0.0, 2: 0.0, 3: 0.0}, [(1, 2, 30.0), (2, 3, 5.0), (9, 1, 99.0)])  # 9 is not biased here
    assert out == {1: 35.0, 2: 5.0, 3: 0.0}
    assert solve({1: 0.0, 2: 0.0}, [(1, 2, 30.0), (2, 1, 1.0)]) is None


class _Vocab:
    """A toy tokenizer: tokens 0..5 spell 'a', 'b', 'ab', ']', '][', '['; the tokenizer merges greedily."""

    pieces = [b"a", b"b", b"ab", b"]", b"][", b"["]
    ambiguous = frozenset()
    n_vocab = 6

    def piece(self, t):
        return self.pieces[t]

    def text(self, tokens):
        return b"".join(self.pieces[t] for t in tokens).decode()

    def token_id(self, key, raw):
        return self.pieces.index(key[2:].encode())

    def tokenize(self, text):
        out = []
        while text:
            t = max((i for i, p in enumerate(self.pieces) if text.startswith(p.decode())),
                    key=lambda i: len(self.pieces[i]))
            out.append(t)
            text = text[len(self.pieces[t]):]
        return out


def _retokenized(vocab):
    return lambda text, tokens: vocab.tokenize(text) != tokens


def test_split_keeps_the_longest_prefix_the_text_reaches_and_forces_the_rest():
    v = _Vocab()
    # "ab", "a", "b" is written "ab", "ab" by the tokenizer: "ab", "a" is reached as text, "b" is forced
    assert split(v, "abab", [2, 0, 1], _retokenized(v)) == ("aba", [1])
    # "a", "]", "[", "][": every prefix past "a", "]" is written otherwise
    assert split(v, "a][][", [0, 3, 5, 4], _retokenized(v)) == ("a]", [5, 4])
    assert split(v, "a", [0], _retokenized(v)) is None  # no head to send


def test_the_grammar_bans_what_would_let_a_longer_forced_token_run_past_the_last():
    v = _Vocab()
    grammar = ForcedPrefixes(None, v)._grammar([4, 3])  # "][" then "]": "][" must not be taken at the last step
    assert grammar == 'root ::= "][]" ([^\\x00\\u005B] [^\\x00]*)?'


def _token(key, logprob, top):
    return Token(key=key, raw=key[2:].encode(), logprob=logprob, top=tuple(Alt(k, k[2:].encode(), lp) for k, lp in top))


class _Server:
    """Answers forced requests as llama-cpp-python with a grammar and a bias: at each step the biased token whose
    text the rest of the literal starts with (any, past the literal) and the highest biased logit; then the rows."""

    def __init__(self, logits):
        self.logits = logits  # per generated step: token -> raw logprob
        self.bodies = []

    async def _fetch(self, transport, route, body, n, fresh=False):
        self.bodies.append(body)
        bias = {int(k): v for k, v in body["logit_bias"].items()}
        literal = body["grammar"].split('"')[1]
        v, written, tokens = _Vocab(), "", []
        for step in range(body["max_tokens"]):
            rest = literal[len(written):]
            allowed = [t for t in bias if not rest or rest.startswith(v.pieces[t].decode())]
            best = max(allowed, key=lambda t: bias[t] + self.logits[step][t])
            row = sorted(self.logits[step].items(), key=lambda kv: -kv[1])
            tokens.append(_token("t:" + v.pieces[best].decode(), self.logits[step][best],
                                 [("t:" + v.pieces[t].decode(), lp) for t, lp in row]))
            written += v.pieces[best].decode()
        return [Choice(text=written, tokens=tuple(tokens), finish_reason="length", keyed_by="text")]


def _row(*logits):
    return dict(enumerate(logits))


BODY = {"model": "m", "prompt": "x", "max_tokens": 1, "min_tokens": 1, "logprobs": 6}


def test_a_step_another_forced_token_won_is_asked_again_with_the_wanted_tokens_bias_raised():
    v = _Vocab()
    # "a", "]" | "[", "][", "]": at the second forced step "]" (likelier) and "][" both fit the literal
    server = _Server([_row(-9, -9, -9, -9, -9, -1.0), _row(-9, -9, -9, -1.0, -3.0, -9),
                      _row(-9, -9, -9, -2.0, -2.5, -9), _row(-4, -5, -6, -7, -8, -9)])
    forced = ForcedPrefixes(server, v)
    tokens = [0, 3, 5, 4, 3]
    row = asyncio.run(forced.row(None, BODY, "a][][]", tokens, _retokenized(v)))
    first, last = server.bodies[0], server.bodies[-1]
    assert "min_tokens" not in first  # llama-cpp-python drops the logit bias where min_tokens is set
    assert first["prompt"] == "a]" and first["max_tokens"] == 4
    assert first["logit_bias"] == {"3": BIAS, "4": BIAS, "5": BIAS}
    assert len(server.bodies) == 2  # "]" won that step: asked again with "][" raised past it
    assert last["logit_bias"]["4"] - last["logit_bias"]["3"] == pytest.approx(2.0 + MARGIN)
    assert forced.reached(tokens)
    assert [a.logprob for a in row.top] == [-4, -5, -6, -7, -8, -9]  # the row after the path: the last step's
    # the answer's rows after each forced token are kept: the row after "a", "]", "[", "][" costs no request
    assert asyncio.run(forced.row(None, BODY, "a][][", tokens[:4], _retokenized(v))).top[0].logprob == -2.0
    assert len(server.bodies) == 2


def test_a_prefix_whose_steps_want_contradicting_biases_is_left_unreached():
    v = _Vocab()
    # "a", "]" | "[", "][", "]", "[": the second forced step wants "][" over the likelier "]", the third "]" over
    # the likelier "]["
    server = _Server([_row(-9, -9, -9, -9, -9, -1.0), _row(-9, -9, -9, -1.0, -3.0, -9),
                      _row(-9, -9, -9, -3.0, -1.0, -9), _row(-9, -9, -9, -9, -9, -1.0), _row(-5, -5, -5, -5, -5, -5)])
    forced = ForcedPrefixes(server, v)
    tokens = [0, 3, 5, 4, 3, 5]
    assert asyncio.run(forced.row(None, BODY, "a][][][", tokens, _retokenized(v))) is None
    assert not forced.reached(tokens) and forced.works is True
    assert len(server.bodies) == 2  # the second answer's constraint contradicts the first's: no more asks
