"""llama.cpp's native /completion route on the wire (respx): found by the probe, used step by step with token-id
prompts and n_probs = the vocabulary, numbers exact (tail 0), and recorded llama-server answers replayed."""

import hashlib
import json
import math

import httpx
import numpy as np
import pytest
import respx

from conftest import load_fixture, needs_model
from deval.backends import native
from deval.backends.openai import OpenAIBackend
from deval.backends.probe import SEARCH_LIMIT
from deval.core.answers import answer_budget
from deval.core.protocol import RunSpec, run_seed
from deval.core.sampling import draw_at, draw_seed, seed_uniform
from deval.core.tasks import TaskCatalog

URL = "http://10.0.0.7:8080/v1"
ROOT = "http://10.0.0.7:8080"


def test_the_native_route_sits_at_the_server_root_outside_v1():
    assert native.completion_url("http://h:8080/v1") == "http://h:8080/completion"
    assert native.completion_url("http://h:8080/v1/") == "http://h:8080/completion"
    assert native.completion_url("http://h/llama/v1?k=1") == "http://h/llama/completion?k=1"
    assert native.completion_url("http://h:8080") == "http://h:8080/completion"


def test_a_recorded_native_answer_reads_as_ids_and_logprobs():
    record = load_fixture("llama-server/native.json")
    ids, lps = native.read_row(record["response"])
    top = record["response"]["completion_probabilities"][0]["top_logprobs"]
    assert ids.tolist() == [e["id"] for e in top] and np.allclose(lps, [e["logprob"] for e in top])


def test_a_recorded_full_vocabulary_answer_trimmed_reads_and_packs_losslessly():
    record = load_fixture("llama-server/native-full-trimmed.json")
    ids, lps = native.read_row(record["response"])
    assert len(ids) == record["kept"] and record["returned"] == record["vocab"]
    assert abs(record["mass"] - 1.0) < 1e-3  # the whole vocabulary (float32 values): every token's log-softmax
    packed = native.pack(ids, lps, record["vocab"])
    assert json.loads(packed)["dtype"] == "<f4"  # llama.cpp's values are float32: packed at 4 bytes, losslessly
    back = native.read_row(json.loads(packed))
    order = np.argsort(ids)
    assert np.array_equal(back[0], ids[order]) and np.array_equal(back[1], lps[order])


@pytest.mark.parametrize("name", ["native", "native-full-trimmed", "native-eos"])
def test_the_lean_reading_of_a_recorded_answer_is_the_json_reading(name):
    response = load_fixture(f"llama-server/{name}.json")["response"]
    raw = json.dumps(response, separators=(",", ":"), ensure_ascii=False).encode()  # as llama-server writes it
    lean = native.parse(raw)
    assert (native.LEAN in lean) == (len(response["completion_probabilities"]) == 1)  # one position: read lean
    for got, want in zip(native.read_row(lean), native.read_row(json.loads(raw))):
        assert np.array_equal(got, want)
    # another entry shape (a field after logprob) is read by json.loads, with the same row
    other = raw.replace(b'"logprob":', b'"x":0,"logprob":').replace(b'}', b',"y":1}')
    assert native.LEAN not in native.parse(other)
    for got, want in zip(native.read_row(native.parse(other)), native.read_row(json.loads(raw))):
        assert np.array_equal(got, want)


def test_a_whole_row_packs_without_ids():
    rng = np.random.default_rng(3)
    lps = np.log(rng.dirichlet(np.ones(300))).astype(np.float32).astype(np.float64)
    ids = rng.permutation(300)
    record = json.loads(native.pack(ids, lps, 300))
    assert "ids" not in record
    back_ids, back = native.read_row(record)
    assert np.array_equal(back_ids, np.arange(300)) and np.array_equal(back[ids], lps)


def test_an_end_of_text_draw_still_carries_the_distribution():
    record = load_fixture("llama-server/native-eos.json")  # EOS forced by logit_bias: values stay pre-bias
    assert record["response"]["stop_type"] == "eos"
    ids, lps = native.read_row(record["response"])
    assert len(ids) == 3 and 2 not in ids.tolist() and np.all(lps < 0)


@needs_model
def test_the_gguf_tokenizer_gives_the_token_ids_llama_server_gives():
    from deval.backends.local import embedded_model_path
    from deval.backends.vocab import Vocab

    record = load_fixture("llama-server/tokenize.json")
    vocab = Vocab(str(embedded_model_path()))
    try:
        assert vocab.tokenize(record["request"]["content"]) == [t["id"] for t in record["response"]["tokens"]]
        assert [vocab.piece(t["id"]).decode() for t in record["response"]["tokens"]] == [
            t["piece"] for t in record["response"]["tokens"]]
    finally:
        vocab.close()


@respx.mock
def test_the_probe_replays_a_recorded_native_answer_and_a_short_row_is_not_the_whole_vocabulary(tmp_path):
    record = load_fixture("llama-server/native-full-trimmed.json")
    respx.get(f"{URL}/models").mock(return_value=httpx.Response(200, json={"data": []}, headers={"server": "x"}))
    respx.post(f"{URL}/chat/completions").mock(side_effect=fake_openai)
    respx.post(f"{URL}/completions").mock(side_effect=fake_openai)
    wire = respx.post(f"{ROOT}/completion").mock(return_value=httpx.Response(200, json=record["response"]))
    engine = OpenAIBackend(model="m", preset="llama-server", base_url=URL, api_key_env="",
                           cache_dir=str(tmp_path / "cache"), retry_base=0.001)
    caps = engine.capabilities()
    engine.close()
    assert wire.call_count == 1 and caps.native == record["kept"] and not caps.full["native"]


def test_sentinels_read_as_minus_infinity_and_a_shape_without_ids_is_malformed():
    body = {"completion_probabilities": [{"id": 1, "logprob": -0.1, "top_logprobs": [
        {"id": 1, "logprob": -0.1}, {"id": 2, "logprob": -3.4e38}]}]}
    assert native.read_row(body)[1][1] == -math.inf
    with pytest.raises(native.Malformed):
        native.read_row({"completion_probabilities": [{"top_logprobs": [{"token": "a", "logprob": -1}]}]})


# -- a fake llama-server whose rows are the whole vocabulary ----------------------------------------------------

def _row(prompt, vocab: int) -> np.ndarray:
    """A deterministic full log-softmax row for a token-id prompt (digits and ', ' likely)."""
    digest = hashlib.sha256(json.dumps(prompt).encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    logits = rng.normal(-4.0, 2.0, vocab)
    logits[rng.integers(0, vocab, 40)] += 8.0
    return logits - np.logaddexp.reduce(logits)


def fake_native(vocab: int, sorted_draws: bool = False):
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        row = _row(body["prompt"], vocab)
        if body.get("return_tokens"):  # the server's own draw
            banned = [i for i, allowed in body.get("logit_bias", []) if allowed is False]
            if banned:  # banned tokens left out (its likeliest other one)
                row[banned] = -np.inf
                return httpx.Response(200, json={"content": "?", "tokens": [int(np.argmax(row))]})
            # llama.cpp's dist sampler: inverse CDF in id order (sorted: an older build's, likeliest first)
            u = seed_uniform(body["seed"])
            order = np.argsort(-row, kind="stable") if sorted_draws else np.arange(vocab)
            token = int(order[draw_at(row[order], u)])
            return httpx.Response(200, json={"content": "?", "tokens": [token]})
        k = min(int(body["n_probs"]), vocab)
        order = np.argsort(-row, kind="stable")[:k]
        top = ",".join(f'{{"id":{i},"token":"?","bytes":[63],"logprob":{v!r}}}'  # as json.dumps, faster
                       for i, v in zip(order.tolist(), row[order].tolist()))
        first = f'"id":{int(order[0])},"token":"?","bytes":[63],"logprob":{float(row[order[0]])!r}'
        return httpx.Response(200, content=f'{{"content":"?","completion_probabilities":[{{{first},'
                                           f'"top_logprobs":[{top}]}}]}}'.encode(),
                              headers={"content-type": "application/json"})
    return answer


def fake_openai(request: httpx.Request) -> httpx.Response:
    content = [{"id": 17, "token": "1", "bytes": [49], "logprob": -0.5,
                "top_logprobs": [{"id": 17, "token": "1", "bytes": [49], "logprob": -0.5}]}]
    return httpx.Response(200, json={"choices": [{"index": 0, "text": "1", "message": {"content": "1"},
                                                  "logprobs": {"content": content}, "finish_reason": "length"}]})


@needs_model
@respx.mock
@pytest.mark.parametrize("preset", ["llama-server", "openai"])
def test_step_by_step_runs_take_the_whole_distribution_from_the_native_route(tmp_path, preset):
    from deval.backends.local import embedded_model_path

    gguf = str(embedded_model_path())
    header = {"server": "llama.cpp"} if preset == "openai" else {"server": "other"}  # generic: found by its header
    respx.get(f"{URL}/models").mock(return_value=httpx.Response(200, json={"data": [{"id": "m"}]}, headers=header))
    respx.post(f"{URL}/chat/completions").mock(side_effect=fake_openai)
    respx.post(f"{URL}/completions").mock(side_effect=fake_openai)
    engine = OpenAIBackend(model="m", preset=preset, base_url=URL, api_key_env="", tokenizer=gguf,
                           cache_dir=str(tmp_path / "cache"), retry_base=0.001)
    from deval.backends.vocab import Vocab

    size = Vocab(gguf).n_vocab
    wire = respx.post(f"{ROOT}/completion").mock(side_effect=fake_native(size))
    caps = engine.capabilities()
    assert caps.native == size and caps.full["native"]
    assert json.loads(wire.calls[0].request.content)["n_probs"] == SEARCH_LIMIT  # the probe asks for everything
    assert engine.describe()["route"] == "native /completion (exact)"
    task = TaskCatalog.load().get("extreme")
    spec = RunSpec(task=task, run=0, seed=run_seed(0, task.name, 0), mode="sequence", steps=3,
                   positions="constrained")
    probed = wire.call_count
    steps = list(engine.measure([spec]))
    engine.close()
    sent = [json.loads(c.request.content) for c in wire.calls[probed:]]
    from deval.backends.native_route import LIGHT_TOP

    # the run starts with its prompt decoded cold in the pinned slot, as the local backend starts every run, and
    # that decode's whole row is the row at the prompt: it is not asked again (the server would re-decode the
    # prompt's last token alone)
    cold = [b for b in sent if b.get("cache_prompt") is False]
    assert len(cold) == 1 and sent[0] is cold[0] and cold[0]["n_probs"] == size
    assert all(b["id_slot"] == 0 for b in sent)
    assert all(b["prompt"] != cold[0]["prompt"] for b in sent[1:])
    sent = sent[1:]
    # a top-1000 row first; the whole vocabulary where a trie token is below it
    assert sent and all(b["n_probs"] in (LIGHT_TOP, size) and isinstance(b["prompt"], list) for b in sent)
    assert all(all(isinstance(t, int) for t in b["prompt"]) for b in sent)
    assert not respx.calls.last.request.url.path.startswith("/v1")
    trie_root = Vocab(gguf)
    _, prompt = trie_root.prompt(spec)
    for step in steps:
        assert step.tail == 0.0 and step.missing == () and "missing-items" not in step.flags
    # step 0's item probabilities: the chain rule down the item trie over the fake server's rows at the prompt
    from deval.core.trie import chain_rule

    trie = trie_root.item_trie(task.matcher)
    want = chain_rule(trie.children, trie.ends, lambda node, tok: math.exp(_row(prompt + list(node), size)[tok]),
                      len(task.items))
    assert np.allclose(steps[0].probs, want, rtol=1e-9, atol=0)
    assert sum(steps[0].probs) > 0
    trie_root.close()


def test_a_draw_decided_from_the_top_k_is_the_draw_over_the_whole_row():
    from deval.core.sampling import draw

    rng = np.random.default_rng(11)
    decided = 0
    for trial in range(300):
        vocab = 2000
        logits = rng.normal(-12.0, 3.0, vocab)
        logits[rng.integers(0, vocab, 5)] += rng.uniform(10, 25)
        logp = logits - np.logaddexp.reduce(logits)
        k = int(rng.choice([5, 50, 500]))
        top = np.argsort(-logp)[:k]
        seen = {int(i): float(logp[i]) for i in top}
        u = seed_uniform(draw_seed(np.random.default_rng(trial)))
        got = native.decided_draw(seen, u, vocab)
        if got is not None:
            decided += 1
            assert got == draw(logp, np.random.default_rng(trial))  # the same u: the same token
    assert decided > 100  # peaked rows: most draws are decided by their top-k


@needs_model
@respx.mock
@pytest.mark.parametrize("given", [None, 4])
def test_native_rows_are_asked_one_at_a_time_unless_concurrency_is_given(tmp_path, given):
    """llama-server computes a row differently when it batches several slots' requests: one in flight by default."""
    import asyncio

    from deval.backends.local import embedded_model_path
    from deval.backends.vocab import Vocab

    gguf = str(embedded_model_path())
    respx.get(f"{URL}/models").mock(return_value=httpx.Response(200, json={"data": [{"id": "m"}]}))
    respx.post(f"{URL}/chat/completions").mock(side_effect=fake_openai)
    respx.post(f"{URL}/completions").mock(side_effect=fake_openai)
    size = Vocab(gguf).n_vocab
    answer, now, most = fake_native(size), [0], [0]

    async def slow(request: httpx.Request) -> httpx.Response:
        now[0] += 1
        most[0] = max(most[0], now[0])
        await asyncio.sleep(0.002)
        now[0] -= 1
        return answer(request)

    wire = respx.post(f"{ROOT}/completion").mock(side_effect=slow)
    engine = OpenAIBackend(model="m", preset="llama-server", base_url=URL, api_key_env="", tokenizer=gguf,
                           cache_dir=str(tmp_path / "cache"), retry_base=0.001, concurrency=given)
    task = TaskCatalog.load().get("extreme")
    specs = [RunSpec(task=task, run=r, seed=run_seed(0, task.name, r), mode="sequence", steps=2,
                     positions="constrained") for r in range(6)]
    engine.capabilities()  # the probe first
    most[0] = 0
    probed = wire.call_count
    steps = list(engine.measure(specs))
    sent = [json.loads(c.request.content) for c in wire.calls[probed:]]
    assert engine.describe()["requests_in_flight"] == (given or 1)
    engine.close()
    assert len(steps) == 12
    assert (most[0] == 1) if given is None else (most[0] > 1)
    # one in flight: every request to slot 0, runs one after another from the task's prompt decoded cold once
    assert all(b.get("id_slot") == (0 if given is None else None) for b in sent)
    assert sum(b.get("cache_prompt") is False for b in sent) == (1 if given is None else 0)


@needs_model
@respx.mock
def test_a_draw_past_a_top_k_row_is_made_by_the_server_among_the_other_tokens(tmp_path):
    """On a top-k route a draw that falls past the visible mass is not the last visible token (a bias toward it):
    the server draws with the visible tokens banned, a draw from the rest of the row."""
    from deval.backends.local import embedded_model_path
    from deval.backends.vocab import Vocab

    gguf = str(embedded_model_path())
    respx.get(f"{URL}/models").mock(return_value=httpx.Response(200, json={"data": [{"id": "m"}]}))
    respx.post(f"{URL}/chat/completions").mock(side_effect=fake_openai)
    respx.post(f"{URL}/completions").mock(side_effect=fake_openai)
    size = Vocab(gguf).n_vocab
    wire = respx.post(f"{ROOT}/completion").mock(side_effect=fake_native(size))
    engine = OpenAIBackend(model="m", preset="llama-server", base_url=URL, api_key_env="", tokenizer=gguf,
                           cache_dir=str(tmp_path / "cache"), retry_base=0.001, top_logprobs=20)
    engine.capabilities()
    assert engine.describe()["route"] == "native /completion (top 20, bounded)"
    probed = wire.call_count
    task = TaskCatalog.load().get("extreme")
    specs = [RunSpec(task=task, run=r, seed=run_seed(0, task.name, r), mode="sequence", steps=3) for r in range(3)]
    steps = list(engine.measure(specs))
    engine.close()
    sent = [json.loads(c.request.content) for c in wire.calls[probed:]]
    tail = [b for b in sent if b.get("return_tokens")]
    assert tail  # the fake rows hold about half their mass outside the top 20
    for b in tail:
        banned = [i for i, allowed in b["logit_bias"] if allowed is False]
        assert sorted(banned) == sorted(np.argsort(-_row(b["prompt"], size), kind="stable")[:20].tolist())
    flags = {f for s in steps for f in s.flags}
    assert "server-tail-draw" in flags and "draw-below-top-k" not in flags


@needs_model
@respx.mock
@pytest.mark.parametrize("sorted_draws", [False, True])
def test_free_draws_are_the_servers_where_its_draw_is_devals_and_the_trajectory_is_the_same(tmp_path, sorted_draws):
    """llama.cpp's dist sampler is deval's draw: after a check on a whole row, a free draw is one request with the
    draw's seed and no probabilities; a server whose draw is another (an older build's, likeliest first) fails the
    check and gets deval's draws from rows. Both walk the same trajectory: deval's draw over the whole rows."""
    from deval.backends.local import embedded_model_path
    from deval.backends.vocab import Vocab

    gguf = str(embedded_model_path())
    respx.get(f"{URL}/models").mock(return_value=httpx.Response(200, json={"data": [{"id": "m"}]}))
    respx.post(f"{URL}/chat/completions").mock(side_effect=fake_openai)
    respx.post(f"{URL}/completions").mock(side_effect=fake_openai)
    size = Vocab(gguf).n_vocab
    wire = respx.post(f"{ROOT}/completion").mock(side_effect=fake_native(size, sorted_draws))
    engine = OpenAIBackend(model="m", preset="llama-server", base_url=URL, api_key_env="", tokenizer=gguf,
                           cache_dir=str(tmp_path / "cache"), retry_base=0.001)
    engine.capabilities()
    probed = wire.call_count
    task = TaskCatalog.load().get("extreme")
    specs = [RunSpec(task=task, run=r, seed=run_seed(0, task.name, r), mode="sequence", steps=1) for r in range(2)]
    steps = list(engine.measure(specs))
    stepper = engine.stepper()
    engine.close()
    sent = [json.loads(c.request.content) for c in wire.calls[probed:]]
    draws = [b for b in sent if b.get("return_tokens") and b["n_probs"] == 0]
    assert stepper.native.server_draws is (not sorted_draws)
    whole = [b for b in sent if b["n_probs"] == size]
    if sorted_draws:  # the check failed on its first seed: then rows, light where they decide the draw
        assert len(draws) == 1 and len(whole) > 1
    else:  # whole rows for the cold prompt and the check: every later draw is the server's
        assert len({b["seed"] for b in draws}) > 8 and len(whole) <= 3
    # the trajectory: deval's draw over the fake rows, token by token, as the local backend walks it; each run
    # asked (a row or a draw) at every prefix of its walk
    vocab = Vocab(gguf)
    vocab_prompt, walks = vocab.prompt(specs[0])[1], []
    for spec in specs:
        rng, (_, tokens) = np.random.default_rng(spec.seed), vocab.prompt(spec)
        for _ in range(answer_budget(task.items, spec.limit)):
            token = draw_at(_row(tokens, size), seed_uniform(draw_seed(rng)))
            if token in vocab.eog:
                break
            tokens = tokens + [token]
        walks.append(tokens)
    vocab.close()
    asked = [b["prompt"] for b in sent]
    start = len(vocab_prompt)
    assert all(all(walk[:i] in asked for i in range(start + 1, len(walk))) for walk in walks)
    assert len(steps) == 2
