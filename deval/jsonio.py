"""JSON files every layer writes: NaN-free dumps, atomic writes, reads that fail in one line."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from deval.errors import ConfigError


def clean(value):
    """JSON-safe copy: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(data: dict, indent: int | None = 2) -> str:
    return json.dumps(clean(data), indent=indent, allow_nan=False)


def dump_line(record: dict) -> str:
    """One JSON line of a record log. Records are built of plain values, so they skip clean()'s recursive copy;
    json.dumps refuses NaN, infinities and numpy integers, and only a record holding one goes through clean()."""
    try:
        return json.dumps(record, allow_nan=False)
    except (ValueError, TypeError):
        return json.dumps(clean(record), allow_nan=False)


def dump_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dumps(data) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found; is this a deval run directory?") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} cannot be read ({exc}); the run directory is damaged") from None
