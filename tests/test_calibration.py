"""Valid sets, the byte-trie oracle, cutoff rules and sequence-level sampling on a tiny exact model."""

import numpy as np
import pytest

from deval.core.sampling import Filters
from deval.analyses.calibration import Rule, auroc, calibrate, node_metrics, rule_grid, trie_nodes
from deval.analyses.diversity import diversity, expected_curve, ideal_curve, member_probabilities, observed_curve
from deval.errors import ConfigError
from deval.core.exact import CachedModel, ValidityOracle, Vocab
from deval.core.validsets import builtin_valid_sets, get_valid_set, load_valid_set_file, valid_set_from_dict
from exact_fakes import VOCAB, FakeExact


def ids(*texts):
    return {VOCAB.index(t) for t in texts}


def test_shipped_valid_sets():
    sets = builtin_valid_sets()
    assert {"us-states", "primes-100", "two-digit", "vowels", "letters"} <= set(sets)
    assert len(sets["us-states"].members) == 50 and len(sets["primes-100"].members) == 25
    assert len(sets["two-digit"].members) == 90 and sets["vowels"].members == tuple("aeiou")
    assert len(sets["letters"].members) == 26
    assert "97" in sets["primes-100"].members and "91" not in sets["primes-100"].members


@pytest.mark.parametrize("data, field", [
    ({"kind": "valid-set", "members": ["a"], "prompt": "p"}, "name"),
    ({"name": "x", "members": ["a"], "prompt": "p"}, "kind"),
    ({"name": "x", "kind": "weights", "members": ["a"], "prompt": "p"}, "kind"),
    ({"name": "x", "kind": "valid-set", "members": [], "prompt": "p"}, "members"),
    ({"name": "x", "kind": "valid-set", "members": ["a", "a"], "prompt": "p"}, "members"),
    ({"name": "x", "kind": "valid-set", "members": [" a"], "prompt": "p"}, "members"),
    ({"name": "x", "kind": "valid-set", "members": ["a"], "prompt": ""}, "prompt"),
    ({"name": "x", "kind": "valid-set", "members": ["a"], "prompt": "p", "weights": [1]}, "weights"),
])
def test_valid_set_errors_name_file_and_field(data, field):
    with pytest.raises(ConfigError, match=f"f.toml: field '{field}'"):
        valid_set_from_dict(data, "f.toml")


def test_valid_set_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_valid_set_file(bad)
    with pytest.raises(ConfigError, match="unknown valid-set task"):
        get_valid_set("nope")


def test_oracle_valid_tokens_follow_the_byte_trie():
    oracle = ValidityOracle(["a", "ae", "o", "11", "13"], Vocab(FakeExact()))
    root = oracle.moves(b"")
    # members' prefixes, with or without a leading space; a lone space may precede the answer
    # whole members in one token ("ae", "11") still need an end token, so they extend
    assert set(np.flatnonzero(root.extend)) == ids(b"a", b"ae", b"o", b"1", b"11", b"13", b" a", b" ")
    assert root.finish == {}
    after_a = oracle.moves(b"a")
    assert set(np.flatnonzero(after_a.extend)) == ids(b"e")
    assert set(after_a.finish) == ids(b"", b"\n", b".")  # a bare space does not end an answer
    assert oracle.moves(b"a").finish[VOCAB.index(b"")] == "a"
    assert not oracle.moves(b"x").valid.any()
    assert set(np.flatnonzero(oracle.moves(b"1").extend)) == ids(b"1", b"3")


def test_rules_against_the_oracle_on_a_known_distribution():
    p = np.array([0.5, 0.3, 0.15, 0.05])
    valid = np.array([True, False, True, True])
    m = node_metrics(np.log(p), valid, rule_grid(top_k=(1, 2), top_p=(0.8,), min_p=(0.2,)), 1.0)
    assert m["validity_mass"] == pytest.approx(0.7)
    q = np.array([0.5, 0.15, 0.05]) / 0.7
    assert m["shape_diversity"] == pytest.approx(np.exp(-(q * np.log(q)).sum()) / 3)
    assert m["auroc"] == pytest.approx(1 / 3)  # the invalid token beats two of the three valid ones
    r = m["rules"]
    assert r["oracle"] == {"precision": 1.0, "recall": 1.0, "kept": 3}
    assert r["none"]["precision"] == pytest.approx(0.75) and r["none"]["recall"] == 1.0
    assert r["top-k 1"]["precision"] == 1.0 and r["top-k 1"]["recall"] == pytest.approx(1 / 3)
    assert r["top-k 2"]["precision"] == 0.5
    assert r["top-p 0.8"]["kept"] == 2 and r["min-p 0.2"]["kept"] == 3


def test_auroc_edges():
    assert auroc(np.array([3.0, 2.0, 1.0]), np.array([True, True, False])) == 1.0
    assert auroc(np.array([1.0, 1.0]), np.array([True, False])) == 0.5
    assert np.isnan(auroc(np.array([1.0]), np.array([True])))


class Task:
    name = "fake"
    prompt = "pick"
    members = ("a", "ae", "o", "11", "13")


def test_calibrate_end_to_end_on_the_fake():
    model = FakeExact()
    nodes = trie_nodes(Task, model)
    assert {(n.text, n.kind) for n in nodes} == {("", "first"), ("a", "end"), ("o", "end"), ("ae", "end"),
                                                 ("11", "end"), ("13", "end")}
    summary, records = calibrate(Task, model, rule_grid(top_k=(1, 3), top_p=(0.9,), min_p=(0.1,)), 40, 1.0, 0)
    assert summary["steps"]["all"]["rules"]["oracle"] == {"precision": 1.0, "recall": 1.0}
    assert summary["sequences"]["oracle"]["validity_rate"] == 1.0
    assert 0 < summary["sequences"]["none"]["validity_rate"] < 1
    assert {r["kind"] for r in records} == {"first", "end"}
    assert summary["forward_passes"] < 40 * 6  # prefixes are shared through the cache


def test_member_probabilities_match_sampling_frequencies():
    model = FakeExact(favourite=b"o", sharpness=1.0)
    vocab = Vocab(model)
    oracle = ValidityOracle(Task.members, vocab)
    cached = CachedModel(model)
    prompt = model.prompt_tokens("")
    q, unexplored = member_probabilities(cached, oracle, prompt, Rule("none"), 1.0, 8, prune=1e-9)
    assert unexplored < 1e-6
    from deval.analyses.calibration import sample_answer
    rng = np.random.default_rng(3)
    n = 4000
    answers = [sample_answer(cached, oracle, prompt, Rule("none"), 1.0, 8, rng) for _ in range(n)]
    for member, prob in q.items():
        se = np.sqrt(prob * (1 - prob) / n)
        assert abs(answers.count(member) / n - prob) < 4 * se + 1e-3
    q_oracle, _ = member_probabilities(cached, oracle, prompt, Rule("oracle", oracle=True), 1.0, 8, prune=1e-9)
    assert sum(q_oracle.values()) == pytest.approx(1.0, abs=1e-6)


def test_curves():
    n = np.arange(1, 200)
    ideal = ideal_curve(10, n)
    assert ideal[0] == pytest.approx(1.0) and ideal[-1] < 10
    rng = np.random.default_rng(0)
    for _ in range(50):  # any sampler, valid or not, stays under the ideal uniform curve in expectation
        q = rng.dirichlet(np.full(10, rng.uniform(0.05, 5))) * rng.uniform(0.1, 1.0)
        assert np.all(expected_curve(q, n) <= ideal + 1e-9)
    np.testing.assert_allclose(expected_curve(np.full(10, 0.1), n), ideal)
    assert observed_curve(["a", None, "a", "b"]).tolist() == [1, 1, 1, 2]


def test_diversity_on_the_fake():
    out = diversity(Task, FakeExact(), Rule("top-k 3", Filters(top_k=3)), 30, 1.0, 0)
    assert len(out["observed"]) == 30 and out["observed"] == sorted(out["observed"])
    assert all(e <= i + 1e-9 for e, i in zip(out["expected"], out["ideal"]))
    assert out["distinct_valid"] == out["observed"][-1]


def test_oracle_samples_are_always_valid_even_with_many_tokenisations():
    model = FakeExact(favourite=b" ", sharpness=4.0)  # loves leading spaces
    oracle = ValidityOracle(Task.members, Vocab(model))
    assert not oracle.moves(b"  ").extend[VOCAB.index(b" ")]  # at most two leading spaces
    from deval.analyses.calibration import sample_answer
    from deval.core.exact import max_answer_tokens
    cached, rng = CachedModel(model), np.random.default_rng(0)
    answers = [sample_answer(cached, oracle, model.prompt_tokens(""), Rule("oracle", oracle=True), 1.0,
                             max_answer_tokens(Task.members), rng) for _ in range(200)]
    assert None not in answers


def test_end_of_answer_is_eos_separator_or_newline_not_every_empty_token():
    """Gemma has thousands of empty-text control tokens: only the model's end-of-generation ones end an answer."""
    from deval.core.exact import Vocab

    class Model:
        n_vocab = 6
        pieces = [b"", b"", b"", b"\n", b",", b"a"]

        def token_bytes(self, i):
            return self.pieces[i]

        def eog_tokens(self):
            return [0]

    assert Vocab(Model()).ends.tolist() == [True, False, False, True, True, False]
