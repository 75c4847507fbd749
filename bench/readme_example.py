"""The README's example output, produced from real runs (never typed by hand).

    python bench/readme_example.py            # print both blocks (the real one from --real-run or a fresh run)
    python bench/readme_example.py --write    # and replace them in README.md between their markers
    python bench/readme_example.py --real-run DIR --write   # the real block from a finished profile run

Two blocks: `mock` (the mock backend's d model, 10 runs: cheap and deterministic, so tests/test_readme.py checks
the README holds exactly this script's output) and `real` (the embedded SmolLM2 via `deval report` of a real
profile run; regenerating it takes minutes on a CPU, so CI checks only that it came from this script's renderer).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WIDTH = 100
MOCK_ARGS = ("--backend", "mock", "--model", "d", "--runs", "10")
REAL_ARGS = ("--runs", "10", "--threads", "1")


def marker(name: str) -> tuple[str, str]:
    return f"<!-- readme_example:{name} -->", f"<!-- /readme_example:{name} -->"


def render(run_dir: Path, command: str) -> str:
    """`deval report RUN` as the README shows it: a fixed width, no colour, no run-files line."""
    from rich.console import Console

    from deval.core.tasks import task_from_dict
    from deval.report.profile import render_profile
    from deval.runs.store import RunDir

    rd = RunDir.open(run_dir)
    config = rd.manifest()["config"]
    tasks = {t["name"]: task_from_dict({k: v for k, v in t.items() if k != "source"}, t.get("source", ""))
             for t in config["tasks"]}
    buf = io.StringIO()
    render_profile(rd.summary(), tasks, rd.steps(), console=Console(file=buf, width=WIDTH, color_system=None))
    return f"```text\n$ {command}\n{buf.getvalue().rstrip()}\n```"


def profile(args: tuple[str, ...], out: Path) -> None:
    subprocess.run([sys.executable, "-m", "deval.cli.main", "profile", *args, "--out", str(out), "--json"],
                   check=True, capture_output=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def mock_block() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        profile(MOCK_ARGS, Path(tmp) / "run")
        return render(Path(tmp) / "run", "deval profile " + " ".join(MOCK_ARGS))


def real_block(run_dir: Path | None) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        if run_dir is None:
            run_dir = Path(tmp) / "run"
            profile(REAL_ARGS, run_dir)
        config = __import__("json").loads((run_dir / "manifest.json").read_text())["config"]
        args = f"--runs {config['runs']}" + (f" --steps {config['steps']}" if config.get("steps") else "") + (
            f" --positions {config['positions']}" if config.get("positions", "free") != "free" else "")
        return render(run_dir, f"deval profile {args}")


def replace(text: str, name: str, block: str) -> str:
    start, end = marker(name)
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {start} ... {end} markers")
    return pattern.sub(lambda _: f"{start}\n{block}\n{end}", text)


def block_in(text: str, name: str) -> str | None:
    start, end = marker(name)
    m = re.search(re.escape(start) + r"\n(.*?)\n" + re.escape(end), text, re.S)
    return m.group(1) if m else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the blocks in README.md")
    parser.add_argument("--real-run", type=Path, help="render the real block from this finished profile run")
    parser.add_argument("--mock-only", action="store_true", help="leave the real block alone")
    a = parser.parse_args()
    blocks = {"mock": mock_block()}
    if not a.mock_only:
        blocks["real"] = real_block(a.real_run)
    if a.write:
        readme = ROOT / "README.md"
        text = readme.read_text()
        for name, block in blocks.items():
            text = replace(text, name, block)
        readme.write_text(text)
    else:
        print("\n\n".join(blocks.values()))


if __name__ == "__main__":
    main()
