"""llmc.model.process: a fresh process's own peak RSS, the in-process sampler, child failures."""

from __future__ import annotations

import mmap
import os
import signal
import sys
import time

import numpy as np
import pytest

from llmc.model.process import (
    FreshProcessError,
    PeakRssSampler,
    current_rss_mb,
    peak_rss_mb,
    reset_peak_rss,
    run_in_fresh_process,
)

MB = 2**20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/self")


def _idle() -> str:
    return "idle"


def _allocate(mb: int) -> int:
    block = np.ones(mb * MB // 8)  # written, so resident
    total = int(block.size)
    del block  # freed again: only the high-water mark remembers it
    return total


def _fail() -> None:
    raise ValueError("no such tensor")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _reset_then_allocate(mb: int) -> tuple[float, float]:
    first = _allocate(mb) and peak_rss_mb()
    reset_peak_rss()
    return first, peak_rss_mb()


def test_fresh_process_peak_is_its_own_and_sees_an_allocation():
    idle, idle_peak = run_in_fresh_process(_idle)
    size, busy_peak = run_in_fresh_process(_allocate, 200)
    assert idle == "idle" and size == 200 * MB // 8
    assert 10 < idle_peak < 1000  # an interpreter with numpy, not this (test) process's peak
    assert 180 < busy_peak - idle_peak < 260


def test_fresh_process_ignores_a_larger_parent():
    ballast = np.ones(300 * MB // 8)  # the parent is now >= 300 MB; a spawned child must not inherit that
    _, peak = run_in_fresh_process(_idle)
    assert peak < peak_rss_mb() - 250
    del ballast


def test_fresh_process_errors_are_one_line():
    with pytest.raises(FreshProcessError, match="ValueError: no such tensor") as info:
        run_in_fresh_process(_fail)
    assert info.value.signal is None and "Traceback" in info.value.details
    with pytest.raises(FreshProcessError, match="killed by signal 9") as info:
        run_in_fresh_process(_die)
    assert info.value.signal == 9


def test_fresh_process_log_gets_the_output(tmp_path):
    log = tmp_path / "child.log"
    with pytest.raises(FreshProcessError):
        run_in_fresh_process(_fail, log=log)
    assert log.read_text().strip().splitlines()[-1] == "ValueError: no such tensor"


def test_sampler_sees_a_freed_allocation():
    # An anonymous mapping, written: resident while held and returned to the system when closed
    # (a numpy array may come from, and go back to, heap memory that stays resident). Judged against
    # the RSS read while it is held and after, not a baseline another thread of this process may move.
    with PeakRssSampler() as rss:
        block = mmap.mmap(-1, 120 * MB)
        view = np.frombuffer(block, dtype=np.uint8)
        view[:] = 1
        del view
        held = current_rss_mb()
        deadline = time.monotonic() + 3  # a few sampling intervals, however busy the machine
        while rss.peak_mb < held - 10 and time.monotonic() < deadline:
            time.sleep(0.02)
        block.close()
        freed = current_rss_mb()
    assert rss.peak_mb >= held - 10
    assert rss.peak_mb >= freed + 100  # the sampler remembers what is gone now


@linux_only
def test_reset_lowers_the_high_water_mark():
    before, after = run_in_fresh_process(_reset_then_allocate, 200)[0]
    assert before - after > 150
