"""The item-position protocol (docs/protocol.md): one pure function, the same positions on every backend."""

import numpy as np
import pytest

from deval.backends.logprobs import Choice, Token
from deval.backends.mock import MockBackend
from deval.core import answers
from deval.core.answers import Matcher, Matching, completion_prompt, find_positions
from deval.core.protocol import RunSpec
from deval.core.tasks import TaskCatalog

CATALOG = TaskCatalog.load()
STREAM = [b"Sure", b"!", b" Here", b" they", b" are", b":", b" 2", b",", b" 1", b",", b" two", b",", b" 4", b",",
          b" 3", b".", b"\n\n", b"These", b" follow", b" the", b" odds"]


def test_local_and_http_backends_find_the_same_positions_in_one_token_stream():
    pytest.importorskip("llama_cpp")
    from deval.backends import local, positions
    task = CATALOG.get("extreme")
    assert local.find_positions is answers.find_positions is positions.core_positions  # one function
    tokens = tuple(Token(f"id:{i}", raw, -0.1, ()) for i, raw in enumerate(STREAM))
    choice = Choice(b"".join(STREAM).decode(), tokens, "stop", "id")
    over_http, http_flags = positions.find_positions(choice, task.items, task.separator, 30, task.matching)
    in_process = local.answer_positions(STREAM, task.matcher, 30)
    assert list(in_process.positions) == over_http and in_process.flags == http_flags
    # the off-set field "two" is a position, kept and counted; the preamble and the trailer are not
    assert [(p.token, p.item) for p in over_http] == [(6, 1), (8, 0), (10, None), (12, 3), (14, 2)]
    assert "preamble" in http_flags and in_process.ended


def test_coin_matches_heads_in_any_case_and_tasks_can_choose_case():
    coin = CATALOG.get("coin")
    stream = [b"Heads", b",", b" tails", b",", b" HEADS", b",", b" Tails"]
    assert [p.item for p in find_positions(stream, coin.matcher, 10).positions] == [0, 1, 0, 1]
    strict = Matcher(coin.items, ",", Matching(case=True))
    assert [p.item for p in find_positions(stream, strict, 10).positions] == [1, None, None]  # "Heads": preamble


def test_answer_ends_at_the_limit_a_blank_line_or_a_full_stop_and_a_cut_field_waits():
    m = CATALOG.get("extreme").matcher
    assert find_positions([b"1", b",", b" 2", b",", b" 3"], m, 2, cut=True).ended  # limit reached, field closed
    open_end = find_positions([b"1", b",", b" 2"], m, 5, cut=True)
    assert not open_end.ended and [p.item for p in open_end.positions] == [0]  # "2" may become "2x"
    assert find_positions([b"1", b",", b" 2", b"\n\n", b"Note"], m, 5, cut=True).ended
    assert not find_positions([b"1", b",", b" 2", b"."], m, 5, cut=True).ended  # "2." may become "2.5"
    assert find_positions([b"1", b",", b" 2", b".", b"\n"], m, 5, cut=True).ended


def test_no_item_anywhere_is_one_off_set_position():
    answer = find_positions([b"The", b" sequence", b" is", b" random"], CATALOG.get("extreme").matcher, 30)
    assert [(p.token, p.item) for p in answer.positions] == [(0, None)] and "no-items-found" in answer.flags


def test_tasks_set_their_own_cue_and_matching(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('name = "t"\nitems = ["Yes", "No"]\nweights = [0.5, 0.5]\nprompt = "Say {items}."\n'
                    'cue = "Choice:"\nmatch_case = true\nstrip = "."\n')
    task = CATALOG.get(str(path))
    assert task.cue == "Choice:" and task.matching == Matching(case=True, strip=".")
    assert completion_prompt("Say it.", task.cue) == "Say it.\n\nChoice:"
    path.write_text('name = "t"\nitems = ["yes", "Yes"]\nweights = [0.5, 0.5]\nprompt = "Say {items}."\n')
    from deval.errors import ConfigError
    with pytest.raises(ConfigError, match="match_case"):
        CATALOG.get(str(path))


@pytest.mark.parametrize("model", ["off-format", "d", "e"])
def test_mock_free_mode_keeps_off_set_draws_and_constrained_mode_never_leaves_the_items(model):
    task = CATALOG.get("extreme")
    runs = lambda positions: [RunSpec(task=task, run=r, seed=r, mode="sequence", steps=30, positions=positions)
                              for r in range(5)]
    free = list(MockBackend(model).measure(runs("free")))
    constrained = list(MockBackend(model).measure(runs("constrained")))
    assert all(s.sampled is not None for s in constrained)
    if model == "off-format":
        assert sum(s.sampled is None for s in free) > 50  # off-set positions are kept and counted
    # the on-set mass is recorded as the model had it, constrained or not
    assert np.mean([sum(s.probs) for s in constrained]) == pytest.approx(np.mean([sum(s.probs) for s in free]),
                                                                         abs=0.05)
