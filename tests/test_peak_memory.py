"""The benchmarks' memory figure: a page that several processes share counts once in the proportional peak, and
once per process in the resident one."""
from __future__ import annotations

import multiprocessing
import sys
import time

import pytest

from bench.cycle import _PeakRss

SHARED = 256 << 20


def _hold(ready, stop):
    ready.set()
    stop.wait(30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="smaps_rollup is Linux's")
def test_the_proportional_peak_counts_a_page_shared_by_forked_children_once_where_the_resident_sum_counts_it_thrice():
    buf = bytearray(SHARED)
    buf[::4096] = b"x" * len(buf[::4096])  # every page resident before the fork, then shared copy-on-write
    ctx = multiprocessing.get_context("fork")
    stop, children = ctx.Event(), []
    try:
        for _ in range(2):
            ready = ctx.Event()
            children.append(ctx.Process(target=_hold, args=(ready, stop)))
            children[-1].start()
            assert ready.wait(30)
        with _PeakRss(every=0.05) as mem:
            time.sleep(0.5)
    finally:
        stop.set()
        for c in children:
            c.join(10)
    assert mem.peak >= 3 * SHARED  # three processes each hold the buffer's pages resident
    assert 0 < mem.peak_pss <= mem.peak - SHARED  # proportionally the buffer counts once, not three times
    assert mem.peak_pss >= SHARED  # but it does count
