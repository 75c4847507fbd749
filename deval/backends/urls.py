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
