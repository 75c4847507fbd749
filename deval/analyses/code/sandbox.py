"""Run untrusted Python programs, each in its own confined process, and say whether each exited cleanly.

Mechanisms, strongest first (the strongest available is used; `Sandbox.describe()` states which):
- bwrap: bubblewrap with new network, PID, IPC and UTS namespaces; the file system read-only, home directories,
  /run, /tmp and the working directory hidden; a private size-capped tmpfs /tmp as the only writable place. Run as
  root, the program then drops to a per-worker unprivileged uid (setpriv) so the process limit counts.
- unshare: util-linux unshare with new network and PID namespaces (root only), the same uid drop; no private file
  system view (the program can write only where any user can).
- rlimits: resource limits only, no network isolation: used only when asked for (allow_weak), never silently.
Every mechanism: its own process group and session, CPU-time, address-space, process-count and file-size limits,
a wall-clock timeout that kills the whole group, an empty environment, stdin closed, and stdout+stderr written to a
capped file (past the cap the program is killed by SIGXFSZ).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from queue import Queue
from typing import Iterable, Iterator

from deval.errors import BackendError, ConfigError

MECHANISMS = ("bwrap", "unshare", "rlimits")
INSTALL = "install bubblewrap (Debian/Ubuntu: apt-get install -y bubblewrap; Fedora: dnf install bubblewrap)"
HIDDEN = ("/root", "/home", "/run", "/tmp", "/var/tmp", "/mnt", "/media", "/srv")
BASE_UID = 61000  # run as root, worker w of the b-th deval process runs as uid BASE_UID + BLOCK * b + w
BLOCK = 256  # uids per deval process (so at most this many workers)
BLOCKS = 200
TAIL = 300  # characters of output kept as the detail of a failure
PROLOGUE = "import os as _os; _os.close(0); del _os  # deval: stdin closed\n"


@dataclass(frozen=True)
class Limits:
    """Per-candidate limits."""

    wall_s: float = 15.0
    cpu_s: int = 10
    memory_bytes: int = 1 << 30
    processes: int = 32
    file_bytes: int = 1 << 20  # any file the program writes, its output included
    tmp_bytes: int = 16 << 20  # the private /tmp (bwrap)


@dataclass(frozen=True)
class Outcome:
    """How one program ended: passed (exit 0), else a short reason and the tail of its output."""

    passed: bool
    reason: str
    seconds: float
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def signal_reason(sig: int, limits: Limits) -> str:
    names = {signal.SIGXCPU: f"cpu limit ({limits.cpu_s}s)", signal.SIGXFSZ: f"output or file over "
             f"{limits.file_bytes} bytes", signal.SIGKILL: "killed (SIGKILL)", signal.SIGSEGV: "crashed (SIGSEGV)"}
    return names.get(sig, f"killed by signal {sig}")


def exit_reason(code: int, output: str, limits: Limits, mechanism: str) -> str:
    """A short reason from the exit status (shells and bwrap report signal N as 128+N) and the output's last line."""
    if code < 0 or (mechanism != "rlimits" and code > 128 and code - 128 < 65):
        return signal_reason(-code if code < 0 else code - 128, limits)
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
    error = last.split(":", 1)[0] if last and not last.startswith(" ") else ""
    if error == "MemoryError":
        return f"memory limit ({limits.memory_bytes} bytes)"
    if error.isidentifier() and (error.endswith(("Error", "Exception", "Exit")) or error == "KeyboardInterrupt"):
        return error
    return f"exit status {code}"


@lru_cache(maxsize=1)
def available() -> tuple[str, str]:
    """The strongest mechanism that works here, and why a stronger one is not used ('' when bwrap works)."""
    root = os.geteuid() == 0
    if shutil.which("bwrap"):
        probe = subprocess.run(["bwrap", "--unshare-net", "--unshare-pid", "--ro-bind", "/", "/", "--dev", "/dev",
                                "--", "/bin/true"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            if root and not shutil.which("setpriv"):
                return "bwrap", "setpriv (util-linux) is missing: programs run as root with no capabilities"
            return "bwrap", ""
        why = f"bwrap cannot create namespaces here ({probe.stderr.strip()[:120]})"
    else:
        why = f"bubblewrap is not installed; {INSTALL}"
    if root and shutil.which("unshare") and shutil.which("setpriv"):
        python = os.path.realpath(sys.executable)
        probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "setpriv", f"--reuid={BASE_UID}",
                                f"--regid={BASE_UID}", "--clear-groups", "--", python, "-I", "-S", "-c", "pass"],
                               capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return "unshare", why + "; unshare gives no private file system view"
        why += (f"; unshare cannot run {python} as an unprivileged user ({probe.stderr.strip()[:120]}): "
                "the interpreter must be readable by all users")
    return "rlimits", why + "; no network isolation is available"


class Sandbox:
    """Runs programs confined; `mechanism` None picks the strongest available (see module docstring)."""

    def __init__(self, limits: Limits = Limits(), mechanism: str | None = None, allow_weak: bool = False,
                 python: str | None = None):
        best, why = available()
        if mechanism is not None and mechanism not in MECHANISMS:
            raise ConfigError(f"--sandbox must be one of {', '.join(MECHANISMS)} (got {mechanism})")
        chosen = mechanism or best
        if MECHANISMS.index(chosen) < MECHANISMS.index(best):
            raise ConfigError(f"the {chosen} sandbox is not available here ({why}); use --sandbox {best}")
        if chosen == "rlimits" and not allow_weak:
            raise ConfigError(f"no network isolation for untrusted code here ({why}); {INSTALL}, "
                              "or accept resource limits alone with --allow-weak-sandbox")
        self.limits = limits
        self.mechanism = chosen
        self.note = why
        self.python = python or os.path.realpath(sys.executable)
        self.root = os.geteuid() == 0
        self.drop_uid = self.root and chosen != "rlimits" and shutil.which("setpriv") is not None

    def describe(self) -> dict:
        network = {"bwrap": "none (new network namespace)", "unshare": "none (new network namespace)",
                   "rlimits": "NOT isolated"}[self.mechanism]
        files = {"bwrap": "read-only view, home/run/tmp hidden, private tmpfs /tmp",
                 "unshare": "shared view; writable only where any user may write",
                 "rlimits": "shared view; writable where the user may write"}[self.mechanism]
        return {"mechanism": self.mechanism, "network": network, "filesystem": files,
                "uid": f"{uid_block()}+worker" if self.drop_uid else "unchanged", "limits": asdict(self.limits),
                "weaker_because": self.note or None, "stronger": None if self.mechanism == "bwrap" else INSTALL}

    def run(self, source: str, slot: int = 0) -> Outcome:
        """Run one program; passed means it exited with status 0 within the limits."""
        with tempfile.TemporaryDirectory(prefix="deval-sandbox-") as host:
            program = Path(host) / "candidate.py"
            program.write_text(PROLOGUE + source, encoding="utf-8")
            output = Path(host) / "output"
            work = Path(host) / "work"
            work.mkdir()
            uid = uid_block() + slot
            if self.drop_uid:
                os.chown(work, uid, uid)
            os.chmod(host, 0o755)
            program.chmod(0o644)
            outcome = self._execute(self._command(program, work, uid), work, output, uid)
            if not outcome.passed and _wrapper_failed(outcome.detail):
                # the sandbox's own tools failed before the candidate ran (e.g. setpriv: EAGAIN while the slot's
                # last fork bomb was still going down): clear the slot and run once more, never score the tools
                if self.drop_uid:
                    _reap_uid(uid, patience_s=30.0)
                outcome = self._execute(self._command(program, work, uid), work, output, uid)
                if not outcome.passed and _wrapper_failed(outcome.detail):
                    raise BackendError(f"the sandbox ({self.mechanism}) failed to start a program: "
                                       f"{outcome.detail.strip().splitlines()[0][:200]}")
            return outcome

    def run_many(self, sources: Iterable[str], workers: int | None = None) -> Iterator[tuple[int, Outcome]]:
        """(index, outcome) for each program as it finishes, `workers` at a time (default: the CPU count)."""
        with Evaluator(self, workers) as ev:
            futures = {ev.submit(source): i for i, source in enumerate(sources)}
            for done in as_completed(futures):
                yield futures[done], done.result()

    # -- internals -------------------------------------------------------------------------------------

    def _command(self, program: Path, work: Path, uid: int) -> list[str]:
        python = [self.python, "-I", "-S", "-B"]
        drop = (["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                 "--bounding-set=-all", "--"] if self.drop_uid else [])
        if self.mechanism == "rlimits":
            return python + [str(program)]
        if self.mechanism == "unshare":
            return ["unshare", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc",
                    "--"] + drop + python + [str(program)]
        keep = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix,
                                                      os.path.dirname(os.path.dirname(self.python)))})
        system = keep + ["/usr", "/bin", "/lib", "/lib64", "/etc", "/sbin"]
        here = [d for d in (os.getcwd(), str(Path.home())) if not any(_within(s, d) for s in system)]
        hidden = [d for d in HIDDEN + tuple(here) if d != "/" and os.path.isdir(d)]
        cmd = ["bwrap", "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
               "--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for d in dict.fromkeys(hidden):
            cmd += ["--tmpfs", d]
        for p in keep:
            if any(_within(p, d) for d in hidden):
                cmd += ["--ro-bind", p, p]
        cmd += ["--perms", "1777", "--size", str(self.limits.tmp_bytes), "--tmpfs", "/tmp",
                "--perms", "0755", "--dir", "/run/deval", "--ro-bind", str(program), "/run/deval/candidate.py", "--chdir", "/tmp", "--clearenv"]
        if self.drop_uid:
            cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        return cmd + ["--"] + drop + python + ["/run/deval/candidate.py"]

    def _prlimit(self) -> list[str]:
        """util-linux prlimit sets the limits and execs the rest (no Python runs between fork and exec)."""
        lim = self.limits
        procs = lim.processes if self.drop_uid else lim.processes + _user_processes()
        return ["prlimit", f"--cpu={lim.cpu_s}:{lim.cpu_s + 1}", f"--as={lim.memory_bytes}", f"--fsize={lim.file_bytes}",
                f"--nproc={procs}", "--core=0", "--"]

    def _execute(self, cmd: list[str], work: Path, output: Path, uid: int) -> Outcome:
        start = time.monotonic()
        with output.open("wb") as sink:
            proc = subprocess.Popen(self._prlimit() + cmd, stdin=subprocess.DEVNULL, stdout=sink,
                                    stderr=subprocess.STDOUT, env={}, cwd=str(work), start_new_session=True,
                                    close_fds=True)
        try:
            code = proc.wait(timeout=self.limits.wall_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc.pid)  # the whole group, whatever it left behind, timed out or not
            code = proc.wait()
            if self.drop_uid:
                _reap_uid(uid)
        seconds = time.monotonic() - start
        size = output.stat().st_size
        with output.open("rb") as fh:
            data = fh.read(self.limits.file_bytes)
        text = data.decode("utf-8", "replace")
        detail = text[-TAIL:]
        if timed_out:
            return Outcome(False, f"timeout ({self.limits.wall_s:g}s wall)", seconds, detail)
        if size >= self.limits.file_bytes:  # Python ignores SIGXFSZ: its writes fail with EFBIG instead
            return Outcome(False, f"output over {self.limits.file_bytes} bytes", seconds, detail)
        if code == 0:
            return Outcome(True, "passed", seconds)
        return Outcome(False, exit_reason(code, text, self.limits, self.mechanism), seconds, detail)


class Evaluator:
    """A pool of sandbox workers, each with its own slot (uid); submit() returns a Future of an Outcome."""

    def __init__(self, sandbox: Sandbox, workers: int | None = None):
        self.sandbox = sandbox
        self.workers = check_workers(workers)
        self._slots: Queue = Queue()
        for s in range(self.workers):
            self._slots.put(s)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="deval-sandbox")

    def submit(self, source: str) -> Future:
        return self._pool.submit(self._one, source)

    def _one(self, source: str) -> Outcome:
        slot = self._slots.get()
        try:
            return self.sandbox.run(source, slot)
        finally:
            self._slots.put(slot)

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_uid(uid: int, patience_s: float = 5.0) -> None:
    """Kill any process still running as a worker's uid (a fork bomb's children while its namespace goes down)."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        left = [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and _owner(e) == uid]
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.01)


def _wrapper_failed(detail: str | None) -> bool:
    """The output starts with a message of the sandbox's own tools, not the candidate's."""
    first = (detail or "").lstrip().split(":", 1)[0]
    return first in ("setpriv", "unshare", "prlimit", "bwrap")


def _owner(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_uid
    except OSError:
        return -1


def _user_processes() -> int:
    """Processes (and threads) of this real uid now: RLIMIT_NPROC counts them all, so the limit adds to them."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


@lru_cache(maxsize=1)
def uid_block() -> int:
    """The first uid of a block no other running deval process holds (a lock file per block, held until exit):
    two evaluations at once must not count, or reap, each other's processes."""
    import fcntl

    for b in range(BLOCKS):
        fd = os.open(os.path.join(tempfile.gettempdir(), f"deval-sandbox-uids-{b}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        return BASE_UID + BLOCK * b  # fd stays open: the lock lives as long as this process
    raise ConfigError(f"{BLOCKS} deval evaluations are running already; wait for one to finish")


def check_workers(workers: int | None) -> int:
    if workers is not None and not 1 <= workers <= BLOCK:
        raise ConfigError(f"--workers must be between 1 and {BLOCK} (got {workers})")
    return workers or os.cpu_count() or 1
