"""Shipped data folders and the TOML data files (tasks, valid sets, presets): reading and field checks."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Callable, Iterable

from deval.errors import ConfigError

Fail = Callable[[str, str], ConfigError]


def data_dir(name: str) -> Path:
    """A shipped data folder (tasks, backends): inside the installed wheel, else at the top of the checkout."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "_data" / name
    return installed if installed.is_dir() else package.parent / name


def read_toml(path: Path, what: str) -> dict:
    """A TOML data file (a task, valid set or preset) as a dict; every failure is a one-line ConfigError."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} file {path} cannot be read ({exc}); check the path") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None


def field_checker(data: dict, source: str, known: Iterable[str], required: Iterable[str],
                  hints: dict[str, str] | None = None) -> Fail:
    """Refuse unknown and missing fields; return the `fail(field, fix)` that names the file for later checks."""

    def fail(fieldname: str, fix: str) -> ConfigError:
        return ConfigError(f"{source}: field '{fieldname}': {fix}")

    known = set(known)
    unknown = sorted(set(data) - known)
    if unknown:
        raise fail(unknown[0], f"unknown field; allowed fields are {', '.join(sorted(known))}")
    for name in required:
        if name not in data:
            raise fail(name, "missing; add it" + (hints or {}).get(name, ""))
    return fail


def nonempty_string(data: dict, key: str, fail: Fail) -> str:
    """A required field that must be a non-empty string."""
    value = data[key]
    if not isinstance(value, str) or not value.strip():
        raise fail(key, "must be a non-empty string")
    return value
