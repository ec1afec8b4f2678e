"""Give the heap's free pages back to the system now and then, when the allocator is set to keep them.

`make` runs the notebooks with `GLIBC_TUNABLES` set so that glibc keeps freed blocks for reuse (mmap
off, no trim): a full-vocabulary logit tensor then reuses the pages of the last one instead of
faulting fresh ones in. Its cost: small long-lived blocks land inside the big free ones, the next big
block no longer fits and the heap grows past them, so a kernel's RSS grew by ~1 GB a minute while
what it held stayed near 1-3 GB (runZ7: 10 GB; an attempt before it: 24 GB, killed by the OOM killer).
Those pages are free, only never returned: `malloc_trim(0)` hands back every whole free page inside
the heap (after one KL-profile window: 3.8 -> 1.06 GB in 0.17 s). A daemon thread calls it every
`interval` seconds, so RSS stays near what is live while the heap keeps its reuse between calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable, Mapping

TRIM_INTERVAL = 30.0  # seconds: at the ~1 GB/min growth seen, under a GB of free pages held between calls


def keeps_freed_memory(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether `GLIBC_TUNABLES` turns glibc's mmap of large blocks off (`glibc.malloc.mmap_max=0`)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    return any(part.strip() == "glibc.malloc.mmap_max=0" for part in tunables.split(":"))


def trim_heap() -> bool:
    """`malloc_trim(0)`: every whole free page of every arena back to the system. False where the C
    library has no `malloc_trim` (not glibc: nothing to do), else whether it released memory."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name) if libc_name else None
    trim = getattr(libc, "malloc_trim", None)
    return bool(trim(0)) if trim is not None else False


class HeapTrimmer:
    """Calls `trim` every `interval` seconds on a daemon thread until `stop()` (or the `with` block's
    end); `calls` counts them."""

    def __init__(self, interval: float = TRIM_INTERVAL, trim: Callable[[], object] = trim_heap) -> None:
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
