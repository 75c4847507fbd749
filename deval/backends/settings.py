"""Settings of the OpenAI-compatible backend: validated once, from the preset and the user's options."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import httpx

from deval.backends.cache import default_cache_dir
from deval.backends.presets import ROUTES, Preset
from deval.backends.probe import SEARCH_LIMIT
from deval.backends.urls import MARK, is_redacted, redact
from deval.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """Everything the backend needs besides the model; validated once, here."""

    preset: Preset
    base_url: str
    api_key_env: str
    route: str
    top_logprobs: int
    concurrency: int = 16
    top_given: bool = False  # --top-logprobs was given: the probe searches no higher
    concurrency_given: bool = False  # --concurrency was given: it holds on the native route too
    timeout: float = 120.0
    retry_budget: float = 300.0
    retry_base: float = 0.5
    cache_dir: Path | None = None
    probe: bool = True
    max_tokens: int | None = None

    @classmethod
    def build(cls, preset: Preset, base_url=None, api_key_env=None, route=None, top_logprobs=None, concurrency=None,
              timeout=None, retry_budget=None, retry_base=None, cache_dir=None, no_cache=False, no_probe=False,
              max_tokens=None) -> "Settings":
        if base_url is None and preset.name == "openai":
            base_url = os.environ.get("OPENAI_BASE_URL") or None  # as the openai SDK does
        base_url = (base_url or preset.base_url).rstrip("/")
        if is_redacted(base_url):  # a run directory stores the URL with its secrets masked
            raise ConfigError(f"--base-url {base_url} has its secrets masked ({MARK}), as a run directory stores it; "
                              "pass --base-url again with the full URL")
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"--base-url must start with http:// or https:// (got {redact(base_url)})")
        _check_url(base_url)
        route = route or preset.route
        if route not in ROUTES:
            raise ConfigError(f"--route must be one of {', '.join(ROUTES)} (got {route})")
        top = preset.top_logprobs_cap if top_logprobs is None else top_logprobs
        checks = [("--top-logprobs", top, 1), ("--concurrency", concurrency, 1), ("--timeout", timeout, 0.001),
                  ("--retry-budget", retry_budget, 0), ("--max-tokens", max_tokens, 1)]
        for name, value, lo in checks:
            if value is not None and value < lo:
                raise ConfigError(f"{name} must be >= {lo} (got {value})")
        if no_cache:
            directory = None
        else:
            directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        return cls(preset=preset, base_url=base_url, api_key_env=preset.api_key_env if api_key_env is None else api_key_env,
                   route=route, top_logprobs=int(top), concurrency=concurrency or preset.concurrency, timeout=timeout or 120.0,
                   retry_budget=300.0 if retry_budget is None else retry_budget,
                   retry_base=0.5 if retry_base is None else retry_base, cache_dir=directory,
                   probe=not no_probe, max_tokens=max_tokens, top_given=top_logprobs is not None,
                   concurrency_given=concurrency is not None)

    @property
    def probe_limit(self) -> int:
        """The largest top-k the probe tries: the user's --top-logprobs, else up to any vocabulary."""
        return self.top_logprobs if self.top_given else SEARCH_LIMIT


def _check_url(url: str) -> None:
    """A ConfigError unless the URL parses with a host and a port in range (urllib's reason; it quotes no secret)."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises for a port out of range or not a number
        if not parts.hostname:
            raise ValueError("no host")
        if any(ch.isspace() for ch in url):
            raise ValueError("it contains whitespace")
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:
        why = str(exc) if isinstance(exc, ValueError) else "httpx cannot parse it"
        raise ConfigError(f"--base-url {redact(url)} is not a valid URL ({why}); "
                          "give it as http://HOST:PORT/v1") from None
