"""Host (CPU) memory allocation: keep freed tensor memory in the process for reuse.

glibc's malloc serves every allocation above its mmap threshold (128 KiB, raised dynamically up to
32 MiB) with a fresh ``mmap`` and unmaps it again on ``free``. A CPU training step allocates and
frees tens of activation and gradient tensors larger than that (LeNet++ at batch 512: 51 MiB for
one conv activation), so every step re-faults its whole working set from the kernel (page faults
and kernel time every step, and step-to-step jitter). With the threshold above any tensor size and
no trimming of the heap top, freed blocks are reused: no page faults after the first steps, and
faster, steadier steps (measured by ``benchmarks/bench_training.py`` with and without
``--host-memory system``; numbers in the README, Performance).

The cost: the process keeps its peak heap (it never returns freed memory to the OS), i.e. resident
memory stays at the largest working set seen. GPU training is unaffected either way (CUDA has its
own caching allocator); the host side of it (DataLoader collation) only gains.

Other allocators (jemalloc, tcmalloc via ``LD_PRELOAD``) get the same effect; this setting is a
no-op (with a log line) wherever the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Above every tensor a step allocates (mallopt takes a C int: the largest one).
_NEVER = 2**31 - 1


#: glibc's defaults (malloc.h): 128 KiB for both thresholds.
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024


def _mallopt():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt


def _is_glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def release_freed_host_memory() -> bool:
    """Undo :func:`retain_freed_host_memory` in this process: glibc's default thresholds, freed
    memory goes back to the OS. For processes forked from a training process that must not keep
    their peak heap (DataLoader workers: 8 workers x 8 ranks of ImageNet would each hold theirs).
    Returns whether the setting took effect (``False`` off glibc)."""
    if not _is_glibc():
        return False
    mallopt = _mallopt()
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
        and mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
    )


def retain_freed_host_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of unmapping it (see the module doc).

    Process-wide and irreversible for the process (as intended for a training process; call it
    before the first large allocations). Returns whether the setting took effect: ``False`` on
    non-glibc systems (macOS, Windows, musl), where the system allocator is left as it is.
    """
    if not _is_glibc():
        log.info("host memory: not glibc (%s), the system allocator is kept", platform.system())
        return False
    mallopt = _mallopt()
    # Both or nothing: a high mmap threshold with trimming on would give memory back at the heap
    # top and fault it in again, the cost this removes.
    if not mallopt(_M_TRIM_THRESHOLD, _NEVER):
        log.warning("host memory: mallopt(M_TRIM_THRESHOLD) refused; allocator unchanged")
        return False
    if not mallopt(_M_MMAP_THRESHOLD, _NEVER):
        log.warning("host memory: mallopt(M_MMAP_THRESHOLD) refused; only trimming is off")
        return False
    return True
