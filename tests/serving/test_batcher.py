"""The asyncio batcher both engines share: a lone request runs at once, concurrent ones share runs
(at most max_batch_size each), a request still being read is waited for (bounded), errors reach
every request of their run, a client gone is dropped."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmc.serving.batcher import Batcher, answers_or_errors


class Recorder:
    """run(items): each item doubled, after ``seconds``; the batches it was given."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds, self.batches = seconds, []

    def __call__(self, items):
        self.batches.append(list(items))
        time.sleep(self.seconds)
        return [2 * item for item in items]


def test_a_lone_request_runs_at_once():
    run = Recorder()
    batcher = Batcher(run, max_batch_size=8, wait_s=2.0)

    async def scenario():
        start = time.perf_counter()
        assert await batcher.submit(21) == 42
        return time.perf_counter() - start

    assert asyncio.run(scenario()) < 1.0  # not the 2 s batching wait
    assert run.batches == [[21]]


def test_concurrent_requests_share_runs_of_at_most_max_batch_size():
    run = Recorder(seconds=0.02)
    batcher = Batcher(run, max_batch_size=4, wait_s=0.5)

    async def scenario():
        return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert asyncio.run(scenario()) == [2 * i for i in range(10)]
    assert [len(b) for b in run.batches] == [4, 4, 2] and sum(run.batches, []) == list(range(10))
    assert batcher.runs == 3 and batcher.depth == 0


def test_a_request_being_read_is_waited_for_but_not_forever():
    run = Recorder()
    batcher = Batcher(run, max_batch_size=8, wait_s=0.3)

    async def late_arrival():
        with batcher.coming():
            await asyncio.sleep(0.05)  # reading its body
        return await batcher.submit(2)

    async def never_arrives():
        with batcher.coming():
            await asyncio.sleep(5)

    async def scenario():
        late = asyncio.create_task(late_arrival())
        await asyncio.sleep(0)
        assert await batcher.submit(1) == 2 and await late == 4
        assert run.batches == [[1, 2]]  # waited for the one being read: one run
        slow = asyncio.create_task(never_arrives())
        await asyncio.sleep(0)
        start = time.perf_counter()
        assert await batcher.submit(3) == 6
        waited = time.perf_counter() - start
        slow.cancel()
        return waited

    assert 0.25 <= asyncio.run(scenario()) < 2.0  # the wait is bounded by wait_s


def test_errors_reach_their_run_and_a_gone_client_is_dropped():
    def run(items):
        if "bad" in items:
            raise ValueError("refused")
        return [item.upper() for item in items]

    seen = []
    batcher = Batcher(lambda items: seen.append(list(items)) or run(items), max_batch_size=8, wait_s=0.1)

    async def scenario():
        results = await asyncio.gather(batcher.submit("a"), batcher.submit("bad"), return_exceptions=True)
        assert [type(r) for r in results] == [ValueError, ValueError]
        gone = asyncio.ensure_future(batcher.submit("gone"))
        kept = asyncio.ensure_future(batcher.submit("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        assert await kept == "KEPT"

    asyncio.run(scenario())
    assert seen == [["a", "bad"], ["kept"]]


def test_the_same_batcher_serves_a_new_event_loop():
    batcher = Batcher(Recorder(), max_batch_size=2, wait_s=0.01)
    assert asyncio.run(batcher.submit(1)) == 2
    assert asyncio.run(batcher.submit(2)) == 4  # e.g. a server restarted in the same process


def test_answers_or_errors_isolates_the_refused_item():
    def run(items):
        if 0 in items:
            raise ZeroDivisionError("zero")
        return [1 / i for i in items]

    answers = answers_or_errors(run, [1, 0, 4], ZeroDivisionError)
    assert answers[0] == 1 and isinstance(answers[1], ZeroDivisionError) and answers[2] == 0.25
    assert answers_or_errors(run, [2], ZeroDivisionError) == [0.5]
    with pytest.raises(ValueError):
        Batcher(run, max_batch_size=0, wait_s=0)
