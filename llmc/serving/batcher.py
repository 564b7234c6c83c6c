"""Dynamic batching for the served routes: requests on concurrent connections merged into one run.

Ray Serve has this as ``@serve.batch``, but that decorator exists only inside a Ray Serve replica
(it needs Ray's runtime), and ``llmc serve`` runs in one process with uvicorn by default, without
importing Ray. This small asyncio batcher is written here so that both engines (uvicorn, and a Ray
Serve replica running the same FastAPI app) share one implementation and the routes are written
once.

A route hands its parsed request to :meth:`Batcher.submit` and awaits its own answer. The batcher
runs ``run(items) -> answers`` (one answer per item, in order) in a worker thread, one run at a
time, with up to ``max_batch_size`` items:

* when it is idle and no other request for it is still being read, a request runs at once (a lone
  client pays no batching wait);
* requests that arrive while a run is in progress queue and go together into the next run;
* while fewer than ``max_batch_size`` are queued and other requests for this batcher are still
  being read (:meth:`Batcher.coming`), it waits for them, at most ``wait_s`` after the oldest
  queued request arrived (``--batch-wait-ms``).

A request whose client went away before its run is dropped from the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Merges concurrent ``submit(item)`` calls into ``run(items)`` calls (see the module)."""

    def __init__(self, run: Callable[[list[T]], list[R]], max_batch_size: int, wait_s: float) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, not {max_batch_size}")
        self.run, self.max_batch_size, self.wait_s = run, max_batch_size, wait_s
        self.runs = 0  # runs made (for tests and metrics)
        self._pending: list[tuple[T, asyncio.Future[R], float]] = []
        self._coming = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None

    @property
    def depth(self) -> int:
        """Requests queued, not yet in a run."""
        return len(self._pending)

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """Around reading and parsing a request that will be submitted: the batcher waits for it
        (up to ``wait_s``) before cutting a batch."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1
            self._poke()

    async def submit(self, item: T) -> R:
        """``item``'s answer: ``run([..., item, ...])``'s element for it (an exception ``run``
        raises is raised for every item of that run)."""
        loop = self._bind()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future, loop.time()))
        self._poke()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new event loop (the old one's state is gone)
            self._loop, self._worker, self._changed = loop, None, asyncio.Event()
            self._pending = [entry for entry in self._pending if not entry[1].done()]
        return loop

    def _poke(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            await self._gather(loop)
            batch = [entry for entry in self._pending[: self.max_batch_size] if not entry[1].done()]
            del self._pending[: self.max_batch_size]
            if not batch:
                continue
            self.runs += 1
            try:
                answers = await loop.run_in_executor(None, self.run, [item for item, _, _ in batch])
                if len(answers) != len(batch):
                    raise RuntimeError(f"a batch of {len(batch)} requests got {len(answers)} answers")
            except Exception as exc:  # noqa: BLE001 - every request of the run gets the error
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future, _), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

    async def _gather(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait while the batch could grow: fewer than ``max_batch_size`` queued and requests for
        this batcher still being read, until ``wait_s`` after the oldest queued one arrived."""
        assert self._changed is not None
        deadline = self._pending[0][2] + self.wait_s
        while len(self._pending) < self.max_batch_size and self._coming > 0:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)


def answers_or_errors(run: Callable[[list[Any]], list[Any]], items: list[Any], error: type[Exception]) -> list[Any]:
    """``run(items)``; if it raises ``error``, each item run alone, so that only the items that
    fail get their error (returned in place of their answer)."""
    try:
        return run(items)
    except error as exc:
        if len(items) == 1:
            return [exc]
    out: list[Any] = []
    for item in items:
        try:
            out.extend(run([item]))
        except error as exc:
            out.append(exc)
    return out
