"""Item positions in generated text and p_t(item) from token sets (pure functions)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from deval.core.sampling import Filters
from deval.backends.logprobs import Alt, Choice, Token, parse_response
from deval.backends.positions import find_positions, first_answer_position, item_view, modelled_tail

ITEMS = ("1", "2", "3", "4")


def tok(text, logprob=-0.1, top=(), key=None):
    return Token(key or "t:" + text, text.encode(), logprob,
                 tuple(Alt("t:" + t, t.encode(), lp) for t, lp in top))


def choice(*texts, finish="stop"):
    tokens = tuple(tok(t) for t in texts)
    return Choice("".join(texts), tokens, finish, "text")


def test_positions_are_the_tokens_where_items_start():
    c = choice("2", ",", " ", "1", ",", " ", "4")
    positions, flags = find_positions(c, ITEMS, ",", 10)
    assert [(p.token, p.item) for p in positions] == [(0, 1), (3, 0), (6, 3)]
    assert flags == ()


def test_preamble_is_skipped_and_flagged_and_off_set_fields_are_positions():
    c = choice("Sure", "!", " Here", ":", " ", "2", ",", " ", "x", ",", " ", "3")
    positions, flags = find_positions(c, ITEMS, ",", 10)
    assert [p.item for p in positions] == [1, None, 2]
    assert positions[1].text == "x" and "preamble" in flags


def test_limit_and_cut_off_last_field():
    c = choice("1", ",", "2", ",", "3", ",", "1", finish="length")
    positions, _ = find_positions(c, ITEMS, ",", 10)
    assert [p.item for p in positions] == [0, 1, 2]  # the last "1" may be an unfinished "10"
    positions, _ = find_positions(c, ITEMS, ",", 2)
    assert len(positions) == 2


def test_space_separated_sequence_when_items_have_no_spaces():
    positions, _ = find_positions(choice("1", " ", "2", " ", "3"), ITEMS, ",", 10)
    assert [p.item for p in positions] == [0, 1, 2]
    positions, _ = find_positions(choice("red", ",", " sky", " red", ",", " blue"), ("red", "blue", "dark red"), ",", 10)
    assert [p.item for p in positions] == [0, None, 1]  # "sky red" is one field: items contain spaces


def test_independent_answer_position_skips_leading_blank():
    c = choice(" ", "3", ".")
    pos = first_answer_position(c, ITEMS)
    assert pos.token == 1 and pos.item == 2
    assert first_answer_position(choice("  "), ITEMS) is None


def test_item_probability_sums_every_token_that_spells_it():
    t = tok("7", -1.0, top=[("7", math.log(0.3)), (" 7", math.log(0.2)), (",7", math.log(0.1)), ("8", math.log(0.25))])
    view = item_view(t, ("7", "8", "9"), ",")
    assert view.probs[0] == pytest.approx(0.6) and view.probs[1] == pytest.approx(0.25)
    assert view.missing == (2,) and "missing-items" in view.flags
    assert view.tail == pytest.approx(0.15) and view.tail_cap == pytest.approx(0.1)


def test_tail_cap_comes_from_the_top_k_not_from_a_sampled_token_outside_it():
    t = tok("3", math.log(0.001), top=[("1", math.log(0.5)), ("2", math.log(0.2))])
    view = item_view(t, ("1", "2", "3", "4"), ",")
    assert view.probs == pytest.approx((0.5, 0.2, 0.001, 0.0))  # the sampled token still counts as visible
    assert view.tail == pytest.approx(0.299) and view.missing == (3,)
    assert view.tail_cap == pytest.approx(0.2)  # an unseen token can hold up to 0.2, not 0.001


def test_tokens_are_keyed_by_id_not_text():
    # two distinct ids with the same text are two tokens: both count
    top = (Alt("id:1", b"7", math.log(0.3)), Alt("id:2", b"7", math.log(0.2)))
    t = Token("id:1", b"7", math.log(0.3), top)
    assert item_view(t, ("7",), ",").probs[0] == pytest.approx(0.5)


def test_sentinel_entries_are_unknown_not_zero():
    body = {"choices": [{"message": {"content": "1"}, "logprobs": {"content": [
        {"token": "1", "logprob": math.log(0.9), "top_logprobs": [
            {"token": "1", "logprob": math.log(0.9)}, {"token": "2", "logprob": -9999.0}]}]}}]}
    [c] = parse_response(body)
    view = item_view(c.tokens[0], ("1", "2"), ",")
    assert 1 in view.missing and view.tail == pytest.approx(0.1)
    assert "sentinel-logprob" in view.flags


def test_topk_above_one_is_flagged_and_renormalised():
    t = tok("1", math.log(0.8), top=[("1", math.log(0.8)), ("2", math.log(0.5))])
    view = item_view(t, ("1", "2"), ",")
    assert "topk-sum-above-1" in view.flags and sum(view.probs) == pytest.approx(1.0) and view.tail == 0


def test_multi_token_item_is_first_token_only_and_flagged():
    t = tok("1", -0.5, top=[("1", math.log(0.6)), ("2", math.log(0.3))])
    view = item_view(t, ("1", "2", "10"), ",")
    assert 2 in view.missing and "first-token-only:10" in view.flags


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=3, max_size=6), st.floats(0.3, 3.0))
def test_raw_logprobs_tempered_keep_exact_ratios(weights, temperature):
    # T * (log P_T(i) - log P_T(j)) = log p(i) - log p(j) for visible tokens, whatever the tail
    p = np.array(weights) / sum(weights) * 0.9  # 10% unseen
    items = tuple(str(i + 1) for i in range(len(p)))
    t = tok("1", math.log(p[0]), top=[(x, math.log(v)) for x, v in zip(items, p)])
    view = item_view(t, items, ",", temperature=temperature, raw=True)
    q = np.array(view.probs)
    assert temperature * (math.log(q[0]) - math.log(q[1])) == pytest.approx(math.log(p[0] / p[1]), rel=1e-6)
    assert sum(view.probs) + view.tail == pytest.approx(1.0)
    assert ("tail-modelled" in view.flags) == (temperature != 1.0)


def test_processed_logprobs_are_used_as_they_come():
    t = tok("1", math.log(0.5), top=[("1", math.log(0.5)), ("2", math.log(0.4))])
    view = item_view(t, ("1", "2"), ",", temperature=0.5, raw=False)
    assert view.probs == pytest.approx((0.5, 0.4))


def test_filters_on_raw_logprobs_renormalise_over_kept_tokens():
    t = tok("1", math.log(0.5), top=[("1", math.log(0.5)), ("2", math.log(0.3)), ("3", math.log(0.1))])
    view = item_view(t, ("1", "2", "3"), ",", filters=Filters(top_k=2), raw=True)
    assert view.probs == pytest.approx((0.625, 0.375, 0.0)) and view.tail == pytest.approx(0.0)


def test_modelled_tail_tokens_never_exceed_the_cap():
    full = modelled_tail(np.log([0.5, 0.3]), 0.2, 0.03)
    extra = np.exp(full[2:])
    assert extra.sum() == pytest.approx(0.2) and extra.max() <= 0.03 + 1e-12
