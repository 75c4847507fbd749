"""Base URLs: what of them may be written down (redact) and whether they parse (pure, stdlib only)."""

from __future__ import annotations

import re

MARK = "***"  # what a redacted secret reads as; a URL holding it was redacted and cannot reach a server
_SPLIT = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?(?P<netloc>[^/?#]*)(?P<rest>.*)$", re.S)


def redact(url: str) -> str:
    """The URL without secrets: user:password, every query value and the fragment become ***.

    Works on text that does not parse as a URL too (it is used in the error saying so): nothing here can raise.
    Query names are kept (`?api-version=***&key=***`), so a reader still sees which parameters were set.
    """
    m = _SPLIT.match(url)
    scheme, netloc, rest = m.group("scheme") or "", m.group("netloc"), m.group("rest")
    if "@" in netloc:
        netloc = MARK + "@" + netloc.rsplit("@", 1)[1]
    rest, hashed, fragment = rest.partition("#")
    path, asked, query = rest.partition("?")
    if asked:
        fields = [f.split("=", 1)[0] + "=" + MARK if "=" in f else (MARK if f else f) for f in query.split("&")]
        query = "&".join(fields)
    return scheme + netloc + path + asked + query + (hashed + MARK if hashed else "")


def is_redacted(url: str) -> bool:
    return MARK in url


def url_problem(url: str, source: str = "--base-url") -> str | None:
    """Why a base URL cannot be used, as '<source> <url, redacted>: <why>; <fix>', or None when it is fine."""
    import urllib.parse

    shown = redact(url) or "''"
    fix = "give it as http://HOST:PORT/v1"
    if not url.strip():
        return f"{source} is empty: {fix}"
    if not url.startswith(("http://", "https://")):
        return f"{source} {shown}: is not a valid URL (it must start with http:// or https://); {fix}"
    if any(ch.isspace() for ch in url):
        return f"{source} {shown}: is not a valid URL (it contains whitespace); {fix}"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # raises for a port out of range or not a number
    except ValueError as exc:
        return f"{source} {shown}: is not a valid URL ({exc}); {fix}"
    if not parts.hostname:
        return f"{source} {shown}: is not a valid URL (no host); {fix}"
    return None
