"""Server presets: one TOML file per known OpenAI-compatible server (backends/*.toml), validated on load."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deval.errors import ConfigError
from deval.core.datafiles import data_dir, field_checker, nonempty_string, read_toml

ROUTES = ("chat", "completions")
LOGPROB_KINDS = ("raw", "processed", "unknown")


@dataclass(frozen=True)
class Preset:
    """What deval knows about a server before probing it."""

    name: str
    description: str
    base_url: str
    api_key_env: str
    key_required: bool
    route: str
    top_logprobs_cap: int
    logprobs: str
    n: bool
    quirks: tuple[str, ...]
    sampling: tuple[tuple[str, float], ...]  # neutral sampler values sent unless the user sets that filter
    source: str = ""
    concurrency: int = 16  # requests in flight at most (the limiter backs off from it on timeouts)
    native: bool = False  # llama.cpp's native /completion (n_probs up to the vocabulary) is probed and used


def presets_dir() -> Path:
    """The shipped presets: inside the installed wheel, or at the top of a source checkout."""
    return data_dir("backends")


def preset_from_dict(data: dict, source: str) -> Preset:
    known = {"name", "description", "base_url", "api_key_env", "key_required", "route", "top_logprobs_cap",
             "logprobs", "n", "quirks", "sampling", "concurrency", "native"}
    fail = field_checker(data, source, known, ("name", "base_url", "route", "top_logprobs_cap"))
    for key in ("name", "base_url"):
        nonempty_string(data, key, fail)
    if not data["base_url"].startswith(("http://", "https://")):
        raise fail("base_url", "must start with http:// or https://")
    if data["route"] not in ROUTES:
        raise fail("route", f"must be one of {', '.join(ROUTES)}")
    cap = data["top_logprobs_cap"]
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise fail("top_logprobs_cap", "must be an integer >= 1")
    concurrency = data.get("concurrency", 16)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise fail("concurrency", "must be an integer >= 1")
    kind = data.get("logprobs", "unknown")
    if kind not in LOGPROB_KINDS:
        raise fail("logprobs", f"must be one of {', '.join(LOGPROB_KINDS)}")
    quirks = data.get("quirks", [])
    if not isinstance(quirks, list) or not all(isinstance(q, str) for q in quirks):
        raise fail("quirks", "must be a list of strings")
    sampling = data.get("sampling", {})
    if not isinstance(sampling, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in sampling.values()):
        raise fail("sampling", "must be a table of numbers")
    for key in ("key_required", "n", "native"):
        if not isinstance(data.get(key, False), bool):
            raise fail(key, "must be true or false")
    env = data.get("api_key_env", "")
    if not isinstance(env, str):
        raise fail("api_key_env", "must be the name of an environment variable")
    return Preset(name=data["name"].strip(), description=str(data.get("description", "")),
                  base_url=data["base_url"].rstrip("/"), api_key_env=env, key_required=data.get("key_required", False),
                  route=data["route"], top_logprobs_cap=cap, logprobs=kind, n=data.get("n", False),
                  quirks=tuple(quirks), sampling=tuple(sorted(sampling.items())), source=source,
                  concurrency=concurrency, native=data.get("native", False))


def load_presets(directory: Path | None = None) -> dict[str, Preset]:
    """Every preset by name."""
    directory = directory or presets_dir()
    out = {}
    for path in sorted(directory.glob("*.toml")) if directory.is_dir() else []:
        preset = preset_from_dict(read_toml(path, "preset"), str(path))
        out[preset.name] = preset
    return out


def get_preset(name: str) -> Preset:
    presets = load_presets()
    if name not in presets:
        raise ConfigError(f"unknown server preset '{name}'; known: {', '.join(presets) or 'none'}")
    return presets[name]
