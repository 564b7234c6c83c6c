"""Peak resident memory (RSS), of this process or of a function run in a fresh process.

The one place llmc reads memory high-water marks. On Linux the kernel keeps ``VmHWM`` per
address space, so a spawned child's mark is its own; ``ru_maxrss`` is used only where there is
no ``/proc`` (macOS), because on Linux it survives ``exec`` and a child spawned by a 6 GB parent
would report 6 GB. All sizes are MiB (2**20 bytes), named MB as in the reports.

- :func:`peak_rss_mb`: this process's high-water mark since it started (or since
  :func:`reset_peak_rss`);
- :class:`PeakRssSampler`: the peak while a block runs, in a process that may already have
  peaked higher before it (the high-water mark when it rose during the block, else sampled);
- :func:`run_in_fresh_process`: ``fn(*args)`` in a spawned interpreter, returning its result
  and that process's own peak.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError, first_line

_STATUS = "/proc/self/status"


def _status_mb(key: str) -> float | None:
    """A ``kB`` field of /proc/self/status in MiB; None without /proc."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux ``VmHWM``; ``ru_maxrss`` elsewhere)."""
    peak = _status_mb("VmHWM:")
    if peak is not None:
        return peak
    import resource

    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def current_rss_mb() -> float:
    """This process's resident set size now, in MiB."""
    current = _status_mb("VmRSS:")
    if current is not None:
        return current
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def reset_peak_rss() -> None:
    """Set this process's high-water mark to its current RSS (Linux ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as exc:
        raise LlmcError(f"cannot reset the peak RSS here (needs Linux's /proc/self/clear_refs): {exc}") from exc


class PeakRssSampler:
    """Peak RSS (``peak_mb``) of this process while the ``with`` block runs.

    If the high-water mark rose during the block, the block's peak is that mark (exact). If it
    did not, the process had peaked higher before, and the peak is the largest RSS sampled every
    ``interval_s`` by a thread (which can miss a spike shorter than that).
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._start_hwm = 0.0

    def _sample(self) -> None:
        self.peak_mb = max(self.peak_mb, current_rss_mb())

    def _watch(self) -> None:
        while not self._done.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> PeakRssSampler:
        self._start_hwm = peak_rss_mb()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()
        self._sample()
        end_hwm = peak_rss_mb()
        if end_hwm > self._start_hwm:
            self.peak_mb = max(self.peak_mb, end_hwm)


class FreshProcessError(LlmcError):
    """``fn`` failed in the fresh process: ``reason`` is one line ("ValueError: ...", or "killed by
    signal 9"), ``details`` the child's traceback if it raised, ``signal`` the signal that ended it."""

    def __init__(self, reason: str, details: str = "", signal: int | None = None) -> None:
        super().__init__(f"in a fresh process: {reason}")
        self.reason, self.details, self.signal = reason, details, signal


def run_in_fresh_process(fn: Callable[..., Any], *args: Any, log: str | Path | None = None) -> tuple[Any, float]:
    """``fn(*args)`` in a freshly spawned interpreter: (its result, that process's peak RSS in MiB).

    ``fn`` and ``args`` must pickle (``fn`` a module-level function); the peak covers the whole
    child (interpreter, imports, ``fn``). With ``log``, the child's stdout and stderr go to that
    file. Raises :class:`FreshProcessError` if ``fn`` raised or the child died (e.g. killed for
    memory) without answering.
    """
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(send, fn, args, None if log is None else str(log)))
    process.start()
    send.close()  # the child holds the only writer: its death ends recv() with EOFError
    try:
        message = receive.recv()
    except EOFError:
        message = None
    finally:
        receive.close()
        process.join()
    if message is None:
        code = process.exitcode
        if code is not None and code < 0:
            raise FreshProcessError(f"killed by signal {-code}", signal=-code)
        raise FreshProcessError(f"exited with code {code} before answering")
    status, value, peak = message
    if status == "error":
        reason, details = value
        raise FreshProcessError(reason, details)
    return value, peak


def _child(conn, fn: Callable[..., Any], args: tuple[Any, ...], log: str | None) -> None:
    if log is not None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        message = ("ok", fn(*args), peak_rss_mb())
    except BaseException as exc:  # reported to the parent, whatever it was
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if log is not None:
            sys.stderr.write(details)
            sys.stderr.flush()
        reason = first_line("".join(traceback.format_exception_only(type(exc), exc)), 200)
        message = ("error", (reason, details), None)
    conn.send(message)
    conn.close()
