"""The server's own free draws on the completions route (llama-cpp-python's server; deval.backends.completion_draws):
checked against deval's draw over a row, then one small request per draw, on the wire (respx)."""

import hashlib
import json

import httpx
import numpy as np
import pytest
import respx

from conftest import needs_model
from deval.backends.completion_draws import check_seeds, likeliest_first
from deval.backends.native import decided_draw
from deval.backends.openai import OpenAIBackend
from deval.core.answers import answer_budget
from deval.core.protocol import RunSpec, run_seed
from deval.core.sampling import draw_at, draw_seed, seed_uniform
from deval.core.tasks import TaskCatalog

URL = "http://10.0.0.9:8000/v1"
TOP = 20


def test_check_seeds_part_the_two_orders_and_name_devals_draw_over_the_whole_row():
    rng = np.random.default_rng(3)
    logp = np.full(1000, -np.inf)
    support = rng.choice(1000, 60, replace=False)
    logp[support] = rng.normal(0.0, 2.5, 60)
    logp -= np.logaddexp.reduce(logp[support])
    top = np.argsort(-logp, kind="stable")[:TOP]
    seen = {int(i): float(logp[i]) for i in top}
    found = check_seeds(seen, 1000, count=4)
    assert len(found) == 4
    order = np.argsort(-logp, kind="stable")
    for seed, token in found:
        u = seed_uniform(seed)
        assert token == draw_at(logp, u)  # the draw over the whole row, though only the top 20 was seen
        assert int(order[draw_at(logp[order], u)]) != token == decided_draw(seen, u, 1000)
        assert likeliest_first(seen, u) == int(order[draw_at(logp[order], u)])


def test_a_peaked_row_offers_no_seed_and_costs_no_search_of_every_seed():
    seen = {5: np.log(0.999999), 9: np.log(1e-6)}
    assert check_seeds(seen, 10) == []


# -- a fake llama-cpp-python server: text prompts, text-keyed top-k, seeded draws --------------------------------

def _support(vocab) -> list[int]:
    """Tokens whose text names them alone (digits, punctuation, short words): the fake rows' support."""
    ids = [vocab.by_text[t] for t in ("1", "2", "3", "4", ",", " ", "\n") if t not in vocab.ambiguous]
    for i in range(300, vocab.n_vocab):
        text = vocab.piece(i).decode("utf-8", "ignore")
        if len(ids) == 60:
            break
        if text.strip().isalpha() and text.isascii() and vocab.by_text.get(text) == i and text not in vocab.ambiguous:
            ids.append(i)
    return ids


def _row(prompt: str, support: list[int], size: int) -> np.ndarray:
    digest = hashlib.sha256(prompt.encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    logp = np.full(size, -np.inf)
    logp[support] = rng.normal(0.0, 2.5, len(support))
    return logp - np.logaddexp.reduce(logp[support])


def fake_llama_cpp_python(vocab, support, sorted_draws: bool, blank_from: str | None = None):
    """blank_from: draws at longer prompts than this come back as text "" (a token that is part of a character,
    as llama-cpp-python writes it: several tokens spell that)."""
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if not isinstance(body["prompt"], str):
            return httpx.Response(422, json={"detail": "prompt must be a string"})
        row = _row(body["prompt"], support, vocab.n_vocab)
        token = int(np.argmax(row))
        if "min_tokens" not in body and body.get("seed"):  # a draw: llama.cpp's dist sampler (or likeliest first)
            order = np.argsort(-row, kind="stable") if sorted_draws else np.arange(vocab.n_vocab)
            token = int(order[draw_at(row[order], seed_uniform(body["seed"]))])
        top = np.argsort(-row, kind="stable")[:min(int(body.get("logprobs") or 0), len(support))]
        text = vocab.text([token])
        if blank_from is not None and "min_tokens" not in body and len(body["prompt"]) > len(blank_from):
            text = ""
        logprobs = {"tokens": [text], "token_logprobs": [float(row[token])], "text_offset": [0],
                    "top_logprobs": [{vocab.text([int(i)]): float(row[i]) for i in top}]}
        return httpx.Response(200, json={"choices": [{"index": 0, "text": text, "logprobs": logprobs,
                                                      "finish_reason": "length"}]})
    return answer


def _engine(tmp_path, gguf: str, fake):
    """The fake on the completions route (chat refused) and a llama-cpp-python backend on it, top 20, --tokenizer."""
    respx.get(f"{URL}/models").mock(return_value=httpx.Response(200, json={"data": [{"id": "m"}]}))
    respx.post(f"{URL}/chat/completions").mock(return_value=httpx.Response(400, json={"error": "no chat"}))
    wire = respx.post(f"{URL}/completions").mock(side_effect=fake)
    return wire, OpenAIBackend(model="m", preset="llama-cpp-python", base_url=URL, api_key_env="", tokenizer=gguf,
                               cache_dir=str(tmp_path / "cache"), retry_base=0.001, top_logprobs=TOP,
                               route="completions")


@needs_model
@respx.mock
@pytest.mark.parametrize("sorted_draws", [False, True])
def test_free_draws_are_the_servers_after_the_check_and_walk_devals_trajectory(tmp_path, sorted_draws):
    """A top-20 row cannot make deval's draw where the unseen mass lies before it in token-id order; the server's
    draw with the draw's seed can. A server drawing likeliest first fails the check and gets deval's row draws."""
    from deval.backends.local import embedded_model_path
    from deval.backends.vocab import Vocab

    gguf = str(embedded_model_path())
    vocab = Vocab(gguf)
    support = _support(vocab)
    wire, engine = _engine(tmp_path, gguf, fake_llama_cpp_python(vocab, support, sorted_draws))
    engine.capabilities()
    probed = wire.call_count
    task = TaskCatalog.load().get("extreme")
    specs = [RunSpec(task=task, run=r, seed=run_seed(0, task.name, r), mode="sequence", steps=1) for r in range(3)]
    steps = list(engine.measure(specs))
    stats = engine.stats()
    engine.close()
    sent = [json.loads(c.request.content) for c in wire.calls[probed:]]
    draws = [b for b in sent if "min_tokens" not in b and b.get("seed") and "logit_bias" not in b]
    assert stats["server_draws"] is (not sorted_draws)
    assert all(b["max_tokens"] == 1 and b["temperature"] == 1.0 and b["top_k"] == 0 for b in draws)
    if sorted_draws:  # the check failed on its first seed: every later draw is deval's, from the rows (past the
        assert len(draws) == 1  # top 20, the server's among the others: logit_bias, not checked here)
        return
    assert len({b["seed"] for b in draws}) > 6
    # the trajectory: deval's draw over the fake's whole rows, token by token, as the local backend walks it
    walks = []  # each run's prefixes, from its prompt on
    for spec in specs:
        rng, (text, _) = np.random.default_rng(spec.seed), vocab.prompt(spec)
        walks.append([text])
        for _ in range(answer_budget(task.items, spec.limit)):
            text += vocab.text([draw_at(_row(text, support, vocab.n_vocab), seed_uniform(draw_seed(rng)))])
            walks[-1].append(text)
    prompts = {b["prompt"] for b in draws}
    assert prompts <= {p for walk in walks for p in walk}  # every draw was made on deval's walk
    assert all(walk[2] in prompts for walk in walks)  # and each run went on along it
    assert [s.text for s in steps if s.text] and len(steps) == 3
    vocab.close()


@needs_model
@respx.mock
def test_a_draw_whose_text_names_no_single_token_is_devals_and_flagged(tmp_path):
    from deval.backends.local import embedded_model_path
    from deval.backends.vocab import Vocab

    gguf = str(embedded_model_path())
    vocab = Vocab(gguf)
    task = TaskCatalog.load().get("extreme")
    spec = RunSpec(task=task, run=0, seed=run_seed(0, task.name, 0), mode="sequence", steps=1)
    _, engine = _engine(tmp_path, gguf, fake_llama_cpp_python(vocab, _support(vocab), False, vocab.prompt(spec)[0]))
    steps = list(engine.measure([spec]))
    assert engine.stats()["server_draws"] is True  # the check, at the prompt, passed
    engine.close()
    vocab.close()
    assert steps and all("ambiguous-draw" in s.flags for s in steps)
