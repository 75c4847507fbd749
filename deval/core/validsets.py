"""Valid-set tasks: an exactly known set of valid answers (no P_task), loaded from tasks/valid/*.toml."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deval.errors import ConfigError
from deval.core.datafiles import field_checker, nonempty_string, read_toml
from deval.core.tasks import TaskCatalog, builtin_tasks_dir

KIND = "valid-set"
FIELDS = {"name", "kind", "description", "members", "prompt"}


@dataclass(frozen=True)
class ValidSetTask:
    """A prompt asking for one answer and the exact set of valid answers."""

    name: str
    description: str
    members: tuple[str, ...]
    prompt: str
    source: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": KIND, "description": self.description, "members": list(self.members),
                "prompt": self.prompt, "source": self.source}


def valid_set_from_dict(data: dict, source: str) -> ValidSetTask:
    """Validate one valid-set task; every error names the file, the field and the fix."""

    fail = field_checker({k: v for k, v in data.items() if k != "source"}, source, FIELDS,
                         ("name", "kind", "members", "prompt"), hints={"kind": f' (kind = "{KIND}")'})
    if data["kind"] != KIND:
        raise fail("kind", f"must be \"{KIND}\" (tasks with weights live in tasks/*.toml)")
    name = nonempty_string(data, "name", fail)
    members = data["members"]
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise fail("members", "must be a non-empty list of strings")
    for m in members:
        if not m or m != m.strip():
            raise fail("members", f"member '{m}' is empty or has leading/trailing spaces; remove them")
    if len(set(members)) != len(members):
        dup = next(m for m in members if members.count(m) > 1)
        raise fail("members", f"'{dup}' appears twice; members must be distinct")
    prompt = data["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise fail("prompt", "must be a non-empty string")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", "must be a string")
    return ValidSetTask(name=name.strip(), description=description, members=tuple(members), prompt=prompt,
                        source=source)


def load_valid_set_file(path: Path) -> ValidSetTask:
    return valid_set_from_dict(read_toml(path, "valid-set"), str(path))


def builtin_valid_sets_dir() -> Path:
    """Where the shipped valid-set tasks live: tasks/valid/ next to the weighted tasks."""
    return builtin_tasks_dir() / "valid"


def builtin_valid_sets() -> dict[str, ValidSetTask]:
    directory = builtin_valid_sets_dir()
    tasks = [load_valid_set_file(p) for p in sorted(directory.glob("*.toml"))] if directory.is_dir() else []
    return {t.name: t for t in tasks}


def get_valid_set(ref: str) -> ValidSetTask:
    """A shipped valid-set task by name, or one from a .toml path."""
    if ref.endswith(".toml"):
        return load_valid_set_file(Path(ref))
    known = builtin_valid_sets()
    if ref not in known:
        weighted = ref in TaskCatalog.load().tasks
        what = (f"'{ref}' is a weighted task (for profile and sweep), not a valid-set task" if weighted
                else f"unknown valid-set task '{ref}'")
        raise ConfigError(f"{what}; run 'deval tasks' to list the valid-set tasks (shipped in "
                          f"{builtin_valid_sets_dir()}: {', '.join(known)}), or pass a valid-set .toml path")
    return known[ref]
