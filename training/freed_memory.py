"""Keep the memory of freed tensors inside the process (glibc), so a CPU training loop stops re-faulting its pages.

A training step frees and re-allocates most of its activations. By default glibc serves large blocks with `mmap` and
gives them back to the kernel when freed (and trims the heap's free top), so the next step touches fresh pages and
takes a page fault for every 4 KiB of them. On this project's 2-core VM that was ~6,000-8,000 faults and ~35 ms of a
~200 ms quick-start step (measured with `getrusage` over 100 steps). Raising both thresholds keeps freed blocks for
reuse; the arithmetic, and so every weight, stays bit-identical.
"""

import ctypes
import ctypes.util
import platform

# mallopt parameter numbers from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
KEEP_UP_TO_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap; a freed heap top up to 1 GiB is not trimmed


def keep_freed_memory() -> bool:
    """
    Sets glibc's malloc to reuse freed memory instead of returning it to the kernel, for this process and the processes
    it forks (DataLoader workers). Returns True when both settings were taken; False where the C library is not glibc
    (nothing is changed there). The cost is resident memory: the process keeps its peak heap (+13% in the quick start).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    kept_heap = libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO_BYTES)
    kept_blocks = libc.mallopt(M_MMAP_THRESHOLD, KEEP_UP_TO_BYTES)
    return kept_heap == 1 and kept_blocks == 1
