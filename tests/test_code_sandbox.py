"""The sandbox: the 164 canonical HumanEval solutions pass, each with one wrong return fails, and hostile programs
are contained, scored as failures with a reason, and leave the evaluator, other files and the machine alone."""

import os
import shutil
import socket
import threading

import pytest

from code_mutations import wrong_return
from deval.errors import BackendError
from deval.analyses.code import programs
from deval.analyses.code.problems import load_problems
from deval.analyses.code.sandbox import BLOCK, Limits, Sandbox, available, exit_reason, uid_block
from deval.errors import ConfigError

pytestmark = pytest.mark.skipif(available()[0] == "rlimits", reason=f"no namespaces here: {available()[1]}")


def canonical_programs(mutate: bool = False) -> list[str]:
    out = []
    for p in load_problems():
        solution = programs.solution_source(p, p.canonical_solution)
        out.append(programs.program(p, wrong_return(solution, p.entry_point) if mutate else solution))
    return out


def test_all_canonical_solutions_pass_in_the_sandbox():
    results = dict(Sandbox().run_many(canonical_programs()))
    failed = {i: o for i, o in results.items() if not o.passed}
    assert len(results) == 164 and not failed, failed


def test_each_canonical_solution_with_one_wrong_return_fails():
    originals = canonical_programs()
    mutated = canonical_programs(mutate=True)
    for a, b in zip(originals, mutated):  # exactly one line differs
        assert len(a.splitlines()) == len(b.splitlines())
        assert sum(x != y for x, y in zip(a.splitlines(), b.splitlines())) == 1
    results = dict(Sandbox().run_many(mutated))
    passed = [i for i, o in results.items() if o.passed]
    assert len(results) == 164 and not passed, passed
    assert all(o.reason in ("AssertionError", "TypeError") for o in results.values())


def worker_processes() -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if uid_block() <= entry.stat().st_uid < uid_block() + BLOCK:
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def mechanisms() -> list[str]:
    """The best mechanism here, and unshare too where deval runs as root (the fallback without bubblewrap)."""
    best = [available()[0]]
    root_fallback = os.geteuid() == 0 and shutil.which("unshare") and shutil.which("setpriv")
    return best + (["unshare"] if best == ["bwrap"] and root_fallback else [])


@pytest.mark.parametrize("mechanism", mechanisms())
def test_hostile_programs_are_contained_and_scored_as_failures(tmp_path, monkeypatch, mechanism):
    secret = "sk-deval-test-secret-0123456789"
    monkeypatch.setenv("DEVAL_TEST_API_KEY", secret)
    canary = tmp_path / "canary.txt"
    canary.write_text("untouched")
    before = sorted(p.name for p in tmp_path.iterdir())
    cwd_before = sorted(os.listdir(os.getcwd()))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    # each exits 0 (would pass) only if its attack worked
    hostile = {
        "infinite loop": "while True:\n    pass\n",
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "20 GB": "x = bytearray(20 * 2**30)\nx[-1] = 1\n",
        "write outside": f"import os\nhits = 0\nfor path in ({str(canary)!r}, {str(tmp_path / 'new.txt')!r}, "
                         f"{os.path.join(os.getcwd(), 'deval-escape.txt')!r}, '/etc/deval-escape', "
                         f"os.path.expanduser('~/deval-escape')):\n"
                         "    try:\n        open(path, 'w').write('escaped')\n        hits += 1\n"
                         "    except OSError:\n        pass\nraise SystemExit(0 if hits else 1)\n",
        "socket": f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n",
        "env keys": "import os\nprint(sorted(os.environ))\n"
                    "raise SystemExit(0 if any('KEY' in k or k.startswith('DEVAL') for k in os.environ) else 1)\n",
        "kill parent": f"import os, signal\nhits = 0\nfor pid in ({os.getpid()}, os.getppid(), 1):\n"
                       "    try:\n        os.kill(pid, signal.SIGKILL)\n        hits += 1\n"
                       "    except OSError:\n        pass\nos.kill(-1, signal.SIGKILL)\nraise SystemExit(0 if hits else 1)\n",
        "megabytes": "import sys\nfor _ in range(50):\n    sys.stdout.write('x' * 100_000)\n",
        "read stdin": "import sys\nsys.stdin.read()\n",
    }
    control = programs.program(load_problems()[0], programs.solution_source(load_problems()[0],
                                                                           load_problems()[0].canonical_solution))
    sources = list(hostile.values()) + [control]
    try:
        try:
            results = dict(Sandbox(Limits(wall_s=4, cpu_s=2), mechanism=mechanism).run_many(sources, workers=4))
        except BackendError as exc:
            # the fallback's own tool could not start ("unshare: sigprocmask unblock failed", seen here at times):
            # deval stops with one line instead of scoring the candidates, which is what this asserts
            assert mechanism == "unshare" and "failed to start a program" in str(exc), exc
            pytest.skip(f"the unshare fallback cannot start here: {exc}")
    finally:
        stop.set()
        thread.join()
        listener.close()
    names = list(hostile) + ["control"]
    reasons = {names[i]: o.reason for i, o in results.items()}
    assert results[len(hostile)].passed, reasons  # the evaluator carried on: a good program still passes
    for i, name in enumerate(hostile):
        assert not results[i].passed and results[i].reason and results[i].reason != "passed", (name, results[i])
    assert reasons["infinite loop"] in ("cpu limit (2s)", "timeout (4s wall)")
    assert reasons["20 GB"].startswith("memory limit")
    assert reasons["megabytes"].startswith("output over")
    assert reasons["socket"] in ("ConnectionRefusedError", "OSError", "TimeoutError"), reasons
    assert not accepted  # nothing reached the host's loopback
    assert secret not in "".join(o.detail for o in results.values())
    assert not any(o.reason.startswith("exit status 2") for o in results.values())  # each one really ran
    assert canary.read_text() == "untouched" and sorted(p.name for p in tmp_path.iterdir()) == before
    assert sorted(os.listdir(os.getcwd())) == cwd_before and not os.path.exists("/etc/deval-escape")
    assert not worker_processes()  # the fork bomb's children are gone


def test_exit_reasons_read_signals_and_errors():
    limits = Limits()
    assert exit_reason(128 + 24, "", limits, "bwrap").startswith("cpu limit")
    assert exit_reason(-9, "", limits, "rlimits") == "killed (SIGKILL)"
    assert exit_reason(1, "Traceback ...\nAssertionError\n", limits, "bwrap") == "AssertionError"
    assert exit_reason(1, "Traceback ...\nMemoryError\n", limits, "bwrap").startswith("memory limit")
    assert exit_reason(3, "some output\n", limits, "bwrap") == "exit status 3"


def test_weak_sandbox_is_never_silent():
    with pytest.raises(ConfigError, match="allow-weak-sandbox"):
        Sandbox(mechanism="rlimits")
    weak = Sandbox(mechanism="rlimits", allow_weak=True)
    assert weak.describe()["network"] == "NOT isolated" and "bubblewrap" in weak.describe()["stronger"]
    with pytest.raises(ConfigError, match="--sandbox must be"):
        Sandbox(mechanism="chroot")
