"""Freed activation buffers go back to the system.

A sweep allocates and frees activations of many sizes, layer after layer. glibc's allocator serves buffers above
its mmap threshold with their own mappings, returned to the system when freed, but it raises that threshold each
time such a buffer is freed, so later buffers come from the heap, where freed space is kept and fragments: on a
GPT-2-small sweep the process then peaked 0.8-1.8x the weights above the loaded model, against 0.4x with the
threshold fixed (benchmarks/run.py, ``M`` rows). The first run therefore fixes the threshold at 128 KiB, glibc's
own starting value, unless the environment already sets ``MALLOC_MMAP_THRESHOLD_``. Other C libraries are left
alone. The price is time: every large buffer is a fresh mapping whose pages the kernel zeroes. Measured on the
same sweep in fresh processes: 36.8 s at 128 KiB (+0.19 GiB), 35.7 s at 4 MiB (+0.24), 31.8 s at 16 MiB
(+0.50), 30.6 s with the dynamic threshold (+1.12). ``MALLOC_MMAP_THRESHOLD_=16777216`` in the environment
trades memory back for speed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
THRESHOLD = 128 * 1024
_state: dict[str, bool] = {}


def release_freed_buffers() -> bool:
    """Fix glibc's mmap threshold once per process; whether this call or an earlier one set it."""
    if "done" in _state:
        return _state["done"]
    _state["done"] = False
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        _state["done"] = bool(libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):
        pass
    return _state["done"]
