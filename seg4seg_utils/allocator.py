"""Keep freed memory in the process instead of handing it back to the kernel after every tensor (glibc only).

Why: glibc's malloc returns the top of its heap to the kernel whenever more than ``M_TRIM_THRESHOLD`` (128 KiB
by default) is free there, and serves blocks above ``M_MMAP_THRESHOLD`` with fresh ``mmap`` calls. A training
step frees and re-allocates megabytes of activations, so every step paid page faults for memory it had just
given back: measured on a 2-core AMD EPYC, ``tests/test_train_gap.py`` spent 9.1 s of its 57 s of CPU in the
kernel, 2.7 s with the thresholds raised. Where memory comes from never changes a number (the smoke main job
gave identical results with and without; ``tests/test_allocator.py``).

Set for every process of the project's .venv at interpreter start-up, so notebook kernels and worker processes
have it too: ``scripts/setup_venv.sh`` copies this file into site-packages and a ``.pth`` line calls
:func:`keep_freed_memory` (it imports nothing but ctypes, so start-up stays fast: about a millisecond).
"""
from __future__ import annotations

import ctypes
import sys

__all__ = ["TRIM_THRESHOLD", "MMAP_THRESHOLD", "keep_freed_memory"]

# mallopt's parameter numbers (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# free memory at the heap's top is returned to the kernel only beyond 1 GiB
TRIM_THRESHOLD = 1 << 30
# blocks up to 32 MiB come from the heap (glibc's upper limit for this threshold on 64-bit systems)
MMAP_THRESHOLD = 32 << 20


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds for this process; False (and nothing done) on other C libraries."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
