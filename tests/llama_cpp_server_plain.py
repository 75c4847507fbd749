"""`python -m llama_cpp.server` with models loaded on plain CPU kernels, as deval's local backend loads them.

Run as `python tests/llama_cpp_server_plain.py --model ...`: the same server, so HTTP and in-process numbers come
from the same kernels (and ggml's AMX path, which crashes under some VMs, stays off).
"""

import runpy
import sys

from deval.backends.local import plain_cpu_kernels

if __name__ == "__main__":
    sys.argv[0] = "llama_cpp.server"
    with plain_cpu_kernels():
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
