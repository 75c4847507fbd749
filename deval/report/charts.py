"""A small terminal line chart (rich Text): several series over a shared x axis, each with its own mark."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.text import Text

STYLES = ("cyan", "magenta", "green", "yellow", "blue", "red")
MARKS = ("●", "◆", "▲", "■", "✚", "✖")


@dataclass(frozen=True)
class Series:
    """y values at x = 1..len(y); drawn with `mark` in `style`."""

    label: str
    y: tuple[float, ...]
    mark: str = "●"
    style: str = "cyan"


def line_chart(series: list[Series], width: int = 60, height: int = 14, y_label: str = "", x_label: str = "") -> Text:
    """Plot series on a width x height grid; later series draw over earlier ones; y from 0 to the largest value."""
    n = max((len(s.y) for s in series), default=0)
    top = max((float(np.nanmax(s.y)) for s in series if len(s.y) and np.any(np.isfinite(s.y))), default=1.0)
    top = top if top > 0 else 1.0
    width = max(2, min(width, n)) if n else 2
    grid: list[list[tuple[str, str]]] = [[(" ", "")] * width for _ in range(height)]
    for s in series:
        y = np.asarray(s.y, dtype=float)
        for col in range(width):
            x = int(round(col * (n - 1) / (width - 1))) if width > 1 else 0
            if x >= len(y) or not np.isfinite(y[x]):
                continue
            row = height - 1 - int(round(y[x] / top * (height - 1)))
            grid[row][col] = (s.mark, s.style)
    out = Text()
    label_w = max(len(f"{top:.0f}"), 3)
    for r, cells in enumerate(grid):
        value = top * (height - 1 - r) / (height - 1)
        tick = f"{value:.0f}" if r in (0, height // 2, height - 1) else ""
        out.append(f"{tick:>{label_w}} │", style="dim")
        for ch, style in cells:
            out.append(ch, style=style)
        out.append("\n")
    out.append(" " * label_w + " └" + "─" * width + "\n", style="dim")
    out.append(" " * label_w + f"  1{'':<{max(width - len(str(n)) - 1, 1)}}{n}\n", style="dim")
    if x_label or y_label:
        out.append(" " * label_w + f"  x: {x_label}   y: {y_label}\n", style="dim")
    for s in series:
        out.append(f"  {s.mark} ", style=s.style)
        out.append(s.label + "\n")
    return out
