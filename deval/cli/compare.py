"""deval compare: finished profile runs side by side."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer


def compare_command(
    runs: List[Path] = typer.Argument(..., help="Two or more profile run directories (the first is the reference)."),
    label: List[str] = typer.Option([], "--label", help="A name per run, in order (default: directory names)."),
    json_out: bool = typer.Option(False, "--json", help="Print only the comparison JSON."),
    html_file: Optional[Path] = typer.Option(None, "--html", help="Also write the comparison as a self-contained page."),
) -> None:
    """Runs side by side: tasks matched by name, each metric and its difference with a 95% interval, verdicts."""
    from deval.analyses.compare import compare_runs
    from deval.cli.common import out
    from deval.jsonio import dumps
    from deval.report.compare import render_compare

    comparison = compare_runs(runs, labels=label or None)
    if html_file is not None:
        comparison.html(html_file)
    if json_out:
        print(dumps(comparison.to_dict()))
        return
    render_compare(comparison.to_dict(), console=out)
    if html_file is not None:
        out.print(f"wrote {html_file}", highlight=False, soft_wrap=True)
