"""The heap trimmer: which allocator settings start it, its thread, and that trimming really returns
the free pages the heap holds under `make`'s setting (in a fresh process, since glibc reads
`GLIBC_TUNABLES` at start-up)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from anee.evaluation.heap import TRIM_ABOVE, HeapTrimmer, keeps_freed_memory, start_heap_trimmer, trim_heap_above

MAKE_SETTING = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736:glibc.malloc.top_pad=268435456"

# a freed 200 MB block: under the setting the heap keeps it (no mmap, no trim); by default it is unmapped on free.
# (In a kernel the kept pages are mostly inside the heap, behind small live blocks, not at its top; malloc_trim
# returns both: by hand, 24 growing blocks each followed by a small kept one grew RSS by 249 MB, trimmed to 1 MB.)
KEEP = """
import json, resource, torch
from anee.evaluation.heap import free_heap_bytes, trim_heap_above
def rss(): return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
before = rss()
big = torch.ones(50_000_000)
del big
kept, free = rss() - before, free_heap_bytes()
above_free = trim_heap_above(free + 2**20)  # more free bytes asked for than the heap holds: no trim
after_above_free = rss() - before
released = trim_heap_above(free - 2**20) and free_heap_bytes() < free
print(json.dumps({"kept": kept, "free": free, "above_free": above_free, "after_above_free": after_above_free,
                  "after_trim": rss() - before, "released": released}))
"""


def _free_big_block(tunables: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | ({"GLIBC_TUNABLES": tunables}
                                                                             if tunables else {})
    done = subprocess.run([sys.executable, "-c", KEEP], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and /proc")
def test_trim_returns_the_free_pages_the_make_setting_keeps():
    kept = _free_big_block(MAKE_SETTING)
    assert kept["kept"] > 150e6 and kept["free"] > 190e6  # freed, still held, and counted as free
    assert not kept["above_free"] and kept["after_above_free"] > 150e6  # under the threshold: kept
    assert kept["released"] and kept["after_trim"] < 40e6  # over it: trimmed, back near where it started
    assert _free_big_block(None)["kept"] < 40e6  # glibc's defaults unmap a large block on free


def test_keeps_freed_memory_reads_mmap_max_zero():
    assert keeps_freed_memory({"GLIBC_TUNABLES": MAKE_SETTING})
    assert keeps_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"})
    assert not keeps_freed_memory({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=10:glibc.malloc.top_pad=1"})
    assert not keeps_freed_memory({"GLIBC_TUNABLES": ""}) and not keeps_freed_memory({})


def test_start_heap_trimmer_only_under_the_setting():
    assert start_heap_trimmer({}) is None
    first = start_heap_trimmer({"GLIBC_TUNABLES": MAKE_SETTING}, interval=3600)
    assert first is not None and first.running
    assert start_heap_trimmer({"GLIBC_TUNABLES": MAKE_SETTING}) is first  # once per process


def test_trimmer_calls_trim_every_interval_until_stopped():
    calls = []
    with HeapTrimmer(0.02, trim=lambda: calls.append(time.monotonic())) as trimmer:
        while len(calls) < 3:
            time.sleep(0.01)
    assert not trimmer.running and trimmer.calls >= 3
    assert all(b - a >= 0.015 for a, b in zip(calls, calls[1:]))
    with pytest.raises(ValueError, match="interval must be > 0"):
        HeapTrimmer(0)


def test_the_trimmer_trims_only_above_the_threshold_by_default():
    assert HeapTrimmer().trim is trim_heap_above and trim_heap_above.__defaults__ == (TRIM_ABOVE,)
