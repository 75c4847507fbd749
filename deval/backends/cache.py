"""Response cache: every successful response, appended and flushed as it arrives, keyed by what determines it.

The key is a SHA-256 over (base URL, route, full request body); the body carries the model and the seed. The
API key is never part of a key or a record. One append-only JSONL file per (base URL, model); a torn last line
(a crash mid-write) is ignored on load. Each record is written with a single os.write on an O_APPEND file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from deval.backends.http import loads
from deval.errors import ConfigError


def default_cache_dir() -> Path:
    """$DEVAL_CACHE_DIR, else $XDG_CACHE_HOME/deval, else ~/.cache/deval."""
    if os.environ.get("DEVAL_CACHE_DIR"):
        return Path(os.environ["DEVAL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deval"


def request_key(base_url: str, route: str, body: dict) -> str:
    canonical = json.dumps({"base_url": base_url, "route": route, "body": body}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def endpoint_id(base_url: str, model: str) -> str:
    return hashlib.sha256(f"{base_url}\n{model}".encode()).hexdigest()[:16]


class ResponseCache:
    """Append-only response store for one (base URL, model); directory None turns it off."""

    def __init__(self, directory: Path | None, base_url: str, model: str):
        self.path = None if directory is None else Path(directory) / f"responses-{endpoint_id(base_url, model)}.jsonl"
        self._index: dict[str, tuple[int, int]] = {}
        self._fd: int | None = None
        self.hits = 0
        if self.path is not None:
            self._load()

    def _load(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot use cache directory {self.path.parent} ({exc.strerror}); "
                              "pass another --cache-dir or --no-cache") from None
        data = self.path.read_bytes()
        offset = 0
        for line in data.split(b"\n"):
            end = offset + len(line)
            if line.startswith(b'{"key":"') and len(line) > 74:
                self._index[line[8:72].decode()] = (offset, len(line))
            offset = end + 1
        if data and not data.endswith(b"\n"):
            os.write(self._fd, b"\n")  # seal a torn last line so the next record starts clean

    def get(self, key: str) -> dict | None:
        if self.path is None or key not in self._index:
            return None
        offset, length = self._index[key]
        line = os.pread(self._fd, length, offset)
        try:
            record = loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or record.get("key") != key:  # torn or misplaced: ask the server again
            del self._index[key]
            return None
        self.hits += 1
        return record["response"]

    def put(self, key: str, response: bytes) -> None:
        """Store a response body as the server sent it (valid JSON; raw newlines can only be whitespace)."""
        if self._fd is None:
            return
        flat = response.strip().replace(b"\r", b" ").replace(b"\n", b" ")
        line = b'{"key":"' + key.encode() + b'","response":' + flat + b"}\n"
        offset = os.lseek(self._fd, 0, os.SEEK_END)
        os.write(self._fd, line)
        self._index[key] = (offset, len(line) - 1)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
