"""The benchmark's peak-memory probe (benchmarks/local_batching.py: PeakRSS)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from icpo_eval.testing.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_script(ROOT / "benchmarks" / "local_batching.py")


def touch(mb: int) -> bytearray:
    """A buffer of ``mb`` MB whose pages are all resident."""
    buf = bytearray(mb * 1_000_000)
    for i in range(0, len(buf), 4096):
        buf[i] = 1
    return buf


def test_high_water_mark_sees_a_freed_allocation_and_resets_between_blocks(bench):
    if not bench.reset_high_water_mark():
        pytest.skip("/proc/self/clear_refs is not writable here")
    with bench.PeakRSS() as big:
        buf = touch(200)
        del buf  # freed before the block ends: only a peak can have seen it
    with bench.PeakRSS() as small:
        pass
    assert big._thread is None  # the kernel's mark, no sampling thread
    assert big.peak - big.start >= 150
    # The second block starts from a reset mark: the first block's peak is not carried over.
    assert small.peak - small.start < 50
    assert small.peak < big.peak - 100


def test_sampling_fallback_where_the_mark_cannot_be_reset(bench, monkeypatch):
    monkeypatch.setattr(bench, "reset_high_water_mark", lambda: False)
    with bench.PeakRSS() as mem:
        buf = touch(200)
        time.sleep(0.1)  # held for ten sampling periods
        del buf
    assert mem._thread is not None
    assert mem.peak - mem.start >= 150
