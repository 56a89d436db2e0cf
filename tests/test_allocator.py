"""cocs.allocator: with freed memory kept, a large tensor lives in glibc's heap instead of
pages of its own (which the operating system would clear again for the next tensor).

Each case runs in a fresh interpreter: the setting lasts for the life of a process."""

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

_PROBE = """
import ctypes, json
import torch
from cocs.allocator import keep_freed_memory, keeps_freed_memory

class MallInfo2(ctypes.Structure):  # glibc's struct mallinfo2 (2.33 and later)
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = keep_freed_memory()
before = libc.mallinfo2().hblkhd  # bytes in blocks with pages of their own
x = torch.ones(25_000_000)  # 100 MB
own_pages = libc.mallinfo2().hblkhd - before  # of them, the tensor's
print(json.dumps({"applied": applied, "recorded": keeps_freed_memory(),
                  "own_pages_mb": own_pages / 2**20}))
"""


def _probe(env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop("COCS_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["COCS_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt and mallinfo2 are glibc's")
def test_large_tensors_live_in_the_heap_once_freed_memory_is_kept():
    kept = _probe(None)
    assert kept["applied"] and kept["recorded"]
    assert kept["own_pages_mb"] < 1, "the 100 MB tensor came from the heap"
    default = _probe("0")  # turned off: glibc's default, pages of its own for 100 MB
    assert not default["applied"] and not default["recorded"]
    assert default["own_pages_mb"] >= 95
