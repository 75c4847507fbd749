"""Parsers against recorded real responses (fixtures/) and the other shapes in servers.md, bad ones included."""

import math

import pytest

from deval.backends.logprobs import Malformed, NoLogprobs, clean_logprob, parse_response


def test_llama_cpp_python_chat_is_text_keyed_with_sampled_token_added(fixture):
    rec = fixture("llama-cpp-python/chat.json")
    [choice] = parse_response(rec["response"])
    assert choice.keyed_by == "text"
    assert choice.text == rec["response"]["choices"][0]["message"]["content"]
    assert b"".join(t.raw for t in choice.tokens).decode() == choice.text
    first = choice.tokens[0]
    # asked for 3, got 4: the sampled token ("3", outside the top 3) is appended, as servers.md says
    assert len(first.top) == 4 and first.top[-1].key == first.key
    assert all(a.logprob <= 0 for t in choice.tokens for a in t.top)


def test_llama_server_chat_keys_by_id_and_bytes(fixture):
    rec = fixture("llama-server/chat.json")
    [choice] = parse_response(rec["response"])
    assert choice.keyed_by == "id"
    first = choice.tokens[0]
    assert first.key.startswith("id:") and all(a.key.startswith("id:") for a in first.top)
    assert len(first.top) == 3
    raw = rec["response"]["choices"][0]["logprobs"]["content"][0]
    assert first.raw == bytes(raw["bytes"]) and first.logprob == pytest.approx(raw["logprob"])


def test_llama_server_completions_route_uses_chat_shape(fixture):
    rec = fixture("llama-server/completions.json")
    [choice] = parse_response(rec["response"])
    assert choice.keyed_by == "id" and choice.text == rec["response"]["choices"][0]["text"]
    assert len(choice.tokens) == rec["request"]["max_tokens"]


def test_llama_cpp_python_completions_legacy_shape(fixture):
    rec = fixture("llama-cpp-python/completions.json")
    [choice] = parse_response(rec["response"])
    lp = rec["response"]["choices"][0]["logprobs"]
    assert choice.keyed_by == "text"
    assert [t.raw.decode() for t in choice.tokens] == lp["tokens"]
    assert choice.tokens[1].top[0].key == "t:2"


def test_llama_server_n2_gives_two_choices(fixture):
    choices = parse_response(fixture("llama-server/chat-n2.json")["response"])
    assert len(choices) == 2


def test_native_logprobs_and_post_sampling_probs_agree(fixture):
    [a] = parse_response(fixture("llama-server/native.json")["response"])
    [b] = parse_response(fixture("llama-server/native-post.json")["response"])
    assert [t.key for t in a.tokens] == [t.key for t in b.tokens]
    # with neutral filters post-sampling probs equal the softmax (up to prompt-cache noise, ~2e-4 here)
    for ta, tb in zip(a.tokens, b.tokens):
        for xa, xb in zip(ta.top, tb.top):
            assert math.exp(xa.logprob) == pytest.approx(math.exp(xb.logprob), abs=5e-3)


def chat(top, token="7", logprob=-0.5, extra=None):
    entry = {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": top}
    return {"choices": [{"index": 0, "message": {"content": token}, "logprobs": {"content": [entry]},
                         "finish_reason": "stop"} | (extra or {})]}


def test_sentinels_and_null_become_minus_infinity_and_are_flagged():
    top = [{"token": "7", "logprob": -0.5, "bytes": [55]}, {"token": "8", "logprob": -9999.0, "bytes": [56]},
           {"token": "9", "logprob": -3.4028234663852886e38, "bytes": [57]}, {"token": "1", "logprob": None, "bytes": [49]}]
    [c] = parse_response(chat(top))
    t = c.tokens[0]
    assert [a.logprob for a in t.top][1:] == [-math.inf] * 3
    assert {"sentinel-logprob", "null-logprob"} <= set(t.flags)


def test_positive_logprob_is_flagged_and_clamped():
    [c] = parse_response(chat([{"token": "7", "logprob": 0.3, "bytes": [55]}], logprob=0.3))
    assert c.tokens[0].logprob == 0.0 and "positive-logprob" in c.tokens[0].flags


def test_fewer_entries_than_asked_are_kept_as_they_are():
    [c] = parse_response(chat([{"token": "7", "logprob": -0.5, "bytes": [55]}]))
    assert len(c.tokens[0].top) == 1


def test_same_text_different_bytes_stay_distinct_tokens():
    top = [{"token": "\ufffd", "logprob": -1.0, "bytes": [0xE2, 0x80]}, {"token": "\ufffd", "logprob": -2.0, "bytes": [0xE2]}]
    [c] = parse_response(chat(top))
    assert len(c.tokens[0].top) == 2


def test_missing_logprobs_raise_nologprobs():
    body = {"choices": [{"index": 0, "message": {"content": "7"}, "logprobs": None}]}
    with pytest.raises(NoLogprobs):
        parse_response(body)
    body["choices"][0]["logprobs"] = {"content": None}
    with pytest.raises(NoLogprobs):
        parse_response(body)
    del body["choices"][0]["logprobs"]
    with pytest.raises(NoLogprobs):
        parse_response(body)


def test_old_llama_cpp_probs_shape():
    body = {"content": "7", "completion_probabilities": [
        {"content": "7", "probs": [{"tok_str": "7", "prob": 0.6}, {"tok_str": " 7", "prob": 0.3}]}]}
    [c] = parse_response(body)
    t = c.tokens[0]
    assert c.keyed_by == "text" and t.logprob == pytest.approx(math.log(0.6))
    assert [a.key for a in t.top] == ["t:7", "t: 7"]


def test_legacy_text_keyed_dict_with_k_plus_one_entries():
    lp = {"tokens": ["7"], "token_logprobs": [-2.0], "text_offset": [0],
          "top_logprobs": [{"1": -0.5, "2": -1.0, "7": -2.0}]}
    [c] = parse_response({"choices": [{"index": 0, "text": "7", "logprobs": lp}]})
    assert len(c.tokens[0].top) == 3 and c.keyed_by == "text"


@pytest.mark.parametrize("body", [
    [], {"choices": []}, {"choices": [{"logprobs": {"content": "x"}}]},
    {"choices": [{"logprobs": {"content": [{"token": "7", "logprob": "high"}]}}]},
    {"choices": [{"logprobs": {"content": [{"logprob": -1.0}]}}]},
    {"choices": [{"logprobs": {"tokens": ["a"], "token_logprobs": []}}]},
    {"choices": [{"logprobs": {"content": [{"token": "7", "logprob": -1, "bytes": [300]}]}}]},
])
def test_malformed_shapes_raise_malformed(body):
    with pytest.raises(Malformed):
        parse_response(body)


def test_clean_logprob_boundaries():
    assert clean_logprob(-9998.0) == (-9998.0, ())
    assert clean_logprob(float("nan"))[0] == -math.inf
    with pytest.raises(Malformed):
        clean_logprob(True)
