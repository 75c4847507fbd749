"""Task files: the shipped set loads, and every bad field is named with its fix."""

import pytest

from deval.errors import ConfigError
from deval.core.tasks import TaskCatalog, load_task_file

GOOD = '''name = "mine"
items = ["a", "b"]
weights = [0.25, 0.75]
prompt = "Pick {steps} of {items} with {distribution}."
'''


def test_shipped_tasks_load_with_exact_weights():
    catalog = TaskCatalog.load()
    for name in ("extreme", "flat", "uniform-10", "binomial-10", "coin", "colors"):
        task = catalog.get(name)
        assert abs(sum(task.weights) - 1) <= 1e-6
        assert len(task.items) == len(task.weights)
    assert catalog.get("extreme").weights == (0.1, 0.7, 0.1, 0.1)
    assert catalog.get("flat").weights[3] == 0.2
    assert catalog.get("uniform-10").items[-1] == "10"


def test_prompt_renders_items_distribution_and_steps():
    task = TaskCatalog.load().get("extreme")
    prompt = task.render_prompt("sequence", 12)
    assert "12 numbers" in prompt and "1, 2, 3, 4" in prompt and "2: 70%" in prompt
    assert "{" not in task.render_prompt("independent", 1)


def write(tmp_path, text, name="t.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("edit, field, fix", [
    (lambda s: s.replace("[0.25, 0.75]", "[0.25, 0.5]"), "weights", "sum to 1"),
    (lambda s: s.replace('["a", "b"]', "[]"), "items", "non-empty"),
    (lambda s: s.replace('name = "mine"\n', ""), "name", "missing"),
    (lambda s: s + 'colour = "red"\n', "colour", "unknown field"),
    (lambda s: s.replace("{steps}", "{count}"), "prompt", "bad placeholder"),
    (lambda s: s.replace('["a", "b"]', '["a", "a"]'), "items", "distinct"),
    (lambda s: s.replace("[0.25, 0.75]", "[-0.25, 1.25]"), "weights", ">= 0"),
    (lambda s: s + 'mode = "batch"\n', "mode", "sequence"),
    (lambda s: s + "steps = 0\n", "steps", ">= 1"),
])
def test_bad_task_files_name_file_field_and_fix(tmp_path, edit, field, fix):
    path = write(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError) as err:
        load_task_file(path)
    message = str(err.value)
    assert str(path) in message and f"'{field}'" in message and fix in message


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_task_file(write(tmp_path, "name = "))
    with pytest.raises(ConfigError, match="not found"):
        load_task_file(tmp_path / "nope.toml")


def test_user_tasks_dir_and_path(tmp_path):
    write(tmp_path, GOOD)
    catalog = TaskCatalog.load([tmp_path])
    assert catalog.get("mine").weights == (0.25, 0.75)
    assert catalog.get(str(tmp_path / "t.toml")).name == "mine"
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        catalog.get("nope")
