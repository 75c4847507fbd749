"""How many choices one request may ask for: what a server's refusal of `n` says (pure)."""

from __future__ import annotations

import re


class FewerChoices(Exception):
    """A 200 with fewer choices than n asked: the server caps or ignores n."""

    def __init__(self, count: int):
        super().__init__(f"{count} choices")
        self.count = count


def n_from(message: str, refused: int) -> int:
    """The n a refusal allows: a number next to 'slot' in the message, else half the refused n."""
    if "slot" in message.lower():
        numbers = [int(x) for x in re.findall(r"\d+", message) if 0 < int(x) < refused]
        if numbers:
            return max(numbers)
    return max(1, refused // 2)
