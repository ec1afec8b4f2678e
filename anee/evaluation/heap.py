"""Give the heap's free pages back to the system now and then, when the allocator is set to keep them.

`make` runs the notebooks with `GLIBC_TUNABLES` set so that glibc keeps freed blocks for reuse (mmap
off, no trim): a full-vocabulary logit tensor then reuses the pages of the last one instead of
faulting fresh ones in. Its cost: small long-lived blocks land inside the big free ones, the next big
block no longer fits and the heap grows past them, so a kernel's RSS grew by ~1 GB a minute while
what it held stayed near 1-3 GB (runZ7: 10 GB; an attempt before it: 24 GB, killed by the OOM killer).
Those pages are free, only never returned: `malloc_trim(0)` hands back every whole free page inside
the heap (after one KL-profile window: 3.8 -> 1.06 GB in 0.17 s). A daemon thread looks every
`interval` seconds and trims when the heap's free bytes exceed `TRIM_ABOVE`, so RSS stays within a few
GB of what is live. Not at every look: a trim also returns the 1.3-1.8 GB a forward pass frees and
takes again moments later, whose pages then fault back in (by hand, 12 rounds of the allocator bench's
forward passes, 54 s: a trim every 10 s cost 2.7-8.6 s and 3.5-4x the page faults; the heap's free
bytes never passed 2 GB, so with the threshold no trim ran and the time was that of no trimmer).
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Mapping
from functools import cache

TRIM_INTERVAL = 30.0  # seconds: at the ~1 GB/min growth seen, under a GB of free pages gathers between looks
TRIM_ABOVE = 4 * 2**30  # free heap bytes: well above what a pass frees and retakes (under 2 GB in the bench)


def keeps_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether `GLIBC_TUNABLES` turns glibc's mmap of large blocks off (`glibc.malloc.mmap_max=0`)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return any(part.strip() == "glibc.malloc.mmap_max=0" for part in tunables.split(":"))


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


@cache
def _libc() -> ctypes.CDLL | None:
    """The symbols the process already has loaded, the C library's among them (None where they cannot
    be opened: not a POSIX system)."""
    try:
        return ctypes.CDLL(None)
    except (OSError, TypeError):
        return None


@cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc's `mallinfo2` with its return type set once (None without glibc 2.33+)."""
    mallinfo2 = getattr(_libc(), "mallinfo2", None)
    if mallinfo2 is not None:
        mallinfo2.restype = _MallInfo2
    return mallinfo2


def free_heap_bytes() -> int | None:
    """Bytes free inside the heap's arenas (glibc's `mallinfo2().fordblks`); None without glibc 2.33+."""
    mallinfo2 = _mallinfo2()
    return None if mallinfo2 is None else int(mallinfo2().fordblks)


def trim_heap() -> bool:
    """`malloc_trim(0)`: every whole free page of every arena back to the system. False where the C
    library has no `malloc_trim` (not glibc: nothing to do), else whether it released memory."""
    trim = getattr(_libc(), "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False


def trim_heap_above(threshold: int = TRIM_ABOVE) -> bool:
    """`trim_heap()` when the heap holds more than `threshold` free bytes (or when it cannot tell)."""
    free = free_heap_bytes()
    return trim_heap() if free is None or free > threshold else False


class HeapTrimmer:
    """Calls `trim` every `interval` seconds on a daemon thread until `stop()` (or the `with` block's
    end); `calls` counts them."""

    def __init__(self, interval: float = TRIM_INTERVAL, trim: Callable[[], object] = trim_heap_above) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval}")
        self.interval, self.trim, self.calls = interval, trim, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="anee-heap-trimmer", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.trim()
            self.calls += 1

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> HeapTrimmer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> HeapTrimmer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_process_trimmer: HeapTrimmer | None = None


def start_heap_trimmer(environ: Mapping[str, str] = os.environ, interval: float = TRIM_INTERVAL) -> HeapTrimmer | None:
    """The process's trimmer, started once if `environ`'s allocator setting keeps freed memory
    (`keeps_freed_memory`); None otherwise (glibc's defaults return large blocks themselves)."""
    global _process_trimmer
    if not keeps_freed_memory(environ):
        return None
    if _process_trimmer is None or not _process_trimmer.running:
        _process_trimmer = HeapTrimmer(interval).start()
    return _process_trimmer
