"""Keep a long-running server's resident memory from ratcheting up with glibc's heap fragmentation.

A generator server allocates and frees KV caches of a few MB to a few hundred MB from several threads (the event
loop, the model's worker, ONNX Runtime's pool). With glibc's defaults each thread may get its own heap arena, and
the mmap threshold rises each time a large block is freed, so later caches come from the heaps, where freed space
is kept for reuse and fragments instead of going back to the system: resident memory grows by hundreds of MB under
load and stays there. `bound_heap_growth` caps the arenas at two and fixes the mmap and trim thresholds at 1 MiB, so
blocks that size or larger are mapped and unmapped on their own and a heap's free top is returned.
`benchmarks/results/serve_load_generate_soak.md` records the server's RSS through 10,000 requests.

It changes process-wide allocator settings, so `deployft serve` (and each Ray replica) calls it for its own process;
`create_app`, which embeds the server in someone else's process, does not.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger("deployft.serve")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
"""glibc's `mallopt` parameters (malloc.h)."""
THRESHOLD = 1 << 20
"""Blocks of 1 MiB or more are mapped on their own; a heap returns free space above this at its top."""
ARENAS = 2
"""Heap arenas at most (glibc's default: 8 per core)."""


def bound_heap_growth(libc_name: str = "libc.so.6") -> bool:
    """Set glibc's malloc to return large freed blocks to the system; False (and nothing changed) where the C
    library is not glibc or refuses a setting."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        logger.debug("no glibc mallopt in %s: allocator settings left as they are", libc_name)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    settings = ((M_ARENA_MAX, ARENAS), (M_MMAP_THRESHOLD, THRESHOLD), (M_TRIM_THRESHOLD, THRESHOLD))
    applied = [mallopt(option, value) == 1 for option, value in settings]
    return all(applied)
