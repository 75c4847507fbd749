"""`deval probe`: check an OpenAI-compatible endpoint and print what it lets deval see."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from deval import backends as registry
from deval.cli.common import ApiKeyEnvOpt, BaseUrlOpt, RetryBudgetOpt, TimeoutOpt, TopLogprobsOpt
from deval.cli.validate import env_base_url
from deval.errors import ConfigError
from deval.jsonio import dumps


def probe_command(
    backend: str = typer.Option("openai", help="openai or a server preset (see 'deval backends')."),
    model: Optional[str] = typer.Option(None, help="The server's model name."),
    base_url: BaseUrlOpt = None,
    api_key_env: ApiKeyEnvOpt = None,
    top_logprobs: TopLogprobsOpt = None,
    timeout: TimeoutOpt = None,
    retry_budget: RetryBudgetOpt = None,
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where the answer is cached."),
    json_out: bool = typer.Option(False, "--json", help="Print only JSON."),
) -> None:
    """Probe an endpoint: logprobs per route, largest top-k, ids/bytes, raw or processed, n."""
    if getattr(registry.backend_class(backend), "name", "") != "openai":
        raise ConfigError(f"probe applies to the openai backend and its presets, not to {backend}")
    env_base_url(backend, base_url)
    options = {k: v for k, v in dict(base_url=base_url, api_key_env=api_key_env, top_logprobs=top_logprobs,
                                     timeout=timeout, retry_budget=retry_budget,
                                     cache_dir=str(cache_dir) if cache_dir else None).items() if v is not None}
    engine = registry.create(backend, model, **options)
    try:
        caps = engine.probe(refresh=True)
    finally:
        engine.close()
    report = {"backend": backend, "model": engine.model, "base_url": engine.describe_url(),
              "capabilities": caps.to_dict()}
    console = Console()
    if json_out:
        print(dumps(report))
        return
    table = Table(title=f"{backend} · {engine.model} · {report['base_url']}")
    table.add_column("check")
    table.add_column("answer")
    for route in ("chat", "completions"):
        top = caps.top_logprobs.get(route, 0)
        said = caps.errors.get(route)
        whole = ", the whole distribution" if caps.full.get(route) else ""
        answer = f"yes, top-{top}{whole}, tokens keyed by {caps.keyed_by.get(route, '?')}" if top else "no"
        table.add_row(f"logprobs on {route}", answer + (f" ({said})" if said and not top else ""))
    table.add_row("prompt continued", "yes (completions route)" if caps.continues.get("completions") else "no")
    sent = ", ".join(f"{k}={v}" for k, v in caps.sampling.items()) or "none"
    sampler = {"neutral": "neutral settings accepted", "standard-only": "sampler extensions refused",
               "preset": "as the preset says (not probed)"}.get(caps.sampler, caps.sampler)
    table.add_row("sampler", f"{sampler}: {sent}")
    if caps.server:
        table.add_row("server", caps.server)
    kind = {"raw": "raw: temperature does not move them (deval applies it)",
            "processed": "processed: they move with temperature (used as they come)",
            "unknown": "unknown: could not tell"}[caps.logprobs]
    table.add_row("logprob values", kind)
    table.add_row("n > 1", "works" if caps.n else "no (one request per step in independent mode)")
    for key, said in caps.errors.items():
        if "-" in key:
            table.add_row(f"note ({key})", said)
    console.print(table)
