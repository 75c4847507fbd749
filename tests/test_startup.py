"""Start-up stays light: `deval --help` and `deval tasks` load no heavy library (speed itself: bench/startup.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

HEAVY = ("numpy", "scipy", "llama_cpp", "openai", "matplotlib", "rapidfuzz", "httpx")
CHECK = """import sys
sys.argv = ["deval", *sys.argv[1:]]
from deval.cli.main import main
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print("LOADED", " ".join(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["tasks"], ["backends"]])
def test_start_up_loads_no_heavy_module(args):
    proc = subprocess.run([sys.executable, "-c", CHECK.format(heavy=HEAVY), *args], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "100"},
                          timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip(), "the command printed nothing"
    loaded = proc.stderr.rsplit("LOADED", 1)[1].split()
    assert loaded == [], f"deval {' '.join(args)} imported {loaded}"
