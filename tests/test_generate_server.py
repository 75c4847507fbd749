"""Free-text generation and `deval code` against a real llama-cpp-python server on 127.0.0.1 (the embedded GGUF)."""

import json

import pytest

from conftest import run_json
from deval.analyses.code.sandbox import available
from deval.backends.openai import OpenAIBackend
from deval.core.protocol import GenerateSpec
from test_llama_cpp_server import server  # noqa: F401  (the module-scoped server fixture)

pytestmark = pytest.mark.model


def test_generation_over_a_real_server_chat_and_raw(server, tmp_path):  # noqa: F811
    url, _ = server
    b = OpenAIBackend(model="smollm2", preset="llama-cpp-python", base_url=url, no_probe=True,
                      cache_dir=str(tmp_path / "cache"))
    specs = [GenerateSpec("Write a Python function that returns 1.", 16, 0.8, 7),
             GenerateSpec("def one():\n    return", 8, 0.8, 7, stop=("\n",), raw=True)]
    got = dict(b.generate(specs))
    assert set(got) == {0, 1} and got[0].strip() and "\n" not in got[1]
    assert b.requests == 2
    assert dict(b.generate(specs)) == got and b.requests == 2  # answered from the response cache
    b.close()


@pytest.mark.skipif(available()[0] == "rlimits", reason="no namespaces for the sandbox here")
def test_deval_code_over_a_real_server(server, tmp_path):  # noqa: F811
    url, _ = server
    out = tmp_path / "run"
    summary = run_json("code", "--backend", "llama-cpp-python", "--base-url", url, "--model", "smollm2",
                       "--no-probe", "--no-cache", "--problems", "0", "--samples", "2", "--temperature", "0.8",
                       "--max-tokens", "48", "--out", str(out))
    g = summary["groups"]["0.8"]
    assert g["samples"] == 2 and g["pass@k"]["1"]["problems"] == 1
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(r["completion"] for r in records)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"]["base_url"] == url and manifest["sandbox"]["mechanism"] == available()[0]
