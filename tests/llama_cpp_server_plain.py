"""`python -m llama_cpp.server` with models loaded as deval's local backend loads them: plain CPU kernels, and flash
attention as deval's default (llama.cpp's own; llama-cpp-python's server defaults to off) unless --flash_attn is
given.

Run as `python tests/llama_cpp_server_plain.py --model ...`: the same server, so HTTP and in-process numbers come
from the same kernels (and ggml's AMX path, which crashes under some VMs, stays off).
"""

import runpy
import sys

from deval.backends.local import FLASH_ATTN_DEFAULT, plain_cpu_kernels

if __name__ == "__main__":
    sys.argv[0] = "llama_cpp.server"
    if not any(a.startswith("--flash_attn") for a in sys.argv):
        sys.argv += ["--flash_attn", str(FLASH_ATTN_DEFAULT)]
    with plain_cpu_kernels():
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
