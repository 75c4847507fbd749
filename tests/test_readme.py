"""The README's example output is produced by bench/readme_example.py and is current."""

import importlib.util

from conftest import ROOT


def load():
    spec = importlib.util.spec_from_file_location("readme_example", ROOT / "bench" / "readme_example.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_mock_example_is_the_scripts_output():
    script = load()
    readme = (ROOT / "README.md").read_text()
    assert script.block_in(readme, "mock") == script.mock_block(), (
        "README's mock example is stale: run python bench/readme_example.py --mock-only --write")


def test_readme_real_example_came_from_the_script():
    script = load()
    block = script.block_in((ROOT / "README.md").read_text(), "real")
    assert block is not None and block.startswith("```text\n$ deval profile --runs ")
    assert "SmolLM2-135M-Instruct" in block and "verdict:" in block and "on-set mass per position" in block
