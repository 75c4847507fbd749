"""Backend registry: name -> (module, class, extra). Modules import lazily, so a missing optional dependency
only matters for the backend that needs it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from deval.errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from deval.core.protocol import Backend

BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "mock": ("deval.backends.mock", "MockBackend", None),
    "local": ("deval.backends.local", "LocalBackend", "local"),
    "openai": ("deval.backends.openai", "OpenAIBackend", None),
}

DESCRIPTIONS = {
    "mock": "scripted models for tests and demos: d, e, uniform, off-format (no model, no network)",
    "local": "a GGUF model in-process through llama-cpp-python: exact full next-token distributions",
    "openai": "any OpenAI-compatible endpoint (--base-url, --model): P_token from top-k logprobs, tail recorded",
}


def server_presets() -> dict:
    """Server presets (backends/*.toml): each resolves to the openai backend with its settings."""
    from deval.backends.presets import load_presets

    return load_presets()


def _preset_name(name: str) -> str | None:
    return name if name not in BACKENDS and name in server_presets() else None


def backend_class(name: str) -> type:
    if _preset_name(name):
        name = "openai"
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}'; run 'deval backends' to list them")
    module_name, class_name, extra = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise BackendUnavailable(
            f"the {name} backend needs {exc.name or 'an optional dependency'}: install it with "
            f"pip install 'deval[{extra}]'") from None
    return getattr(module, class_name)


def create(name: str, model: str | None, **options) -> Backend:
    """A ready backend; options are the backend's own keyword arguments (validated by the backend)."""
    preset = _preset_name(name) or ("openai" if name == "openai" else None)
    if preset:
        return backend_class(name)(model=model, preset=preset, **options)
    return backend_class(name)(model=model, **options)
