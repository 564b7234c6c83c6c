"""Continuous batching: sequences joining and leaving a running batch give each prompt's own
answer (greedy: the tokens ``Runner.generate`` gives it alone), through chunked prefill, the
prefix cache, compaction of the shared timeline, cancellation and per-sequence sampling."""

from __future__ import annotations

import numpy as np
import pytest

from llmc.generation.sampling import Sampling
from llmc.generation.sequence import Sequence, SequenceParams
from llmc.generation.slots import SlotCache
from llmc.generation.streamed import held_back as _held_back

pytest.importorskip("transformers")
from tests.generation.test_generate import EOS, gqa_loaded  # noqa: E402, F401  (the fixture this module reuses)


@pytest.fixture(scope="module")
def decoder(gqa_loaded):  # noqa: F811 - the GroupQueryAttention decoder of test_generate
    return gqa_loaded[0]


PROMPTS = [[5, 17, 9, 40, 22, 8], [11], [30, 31, 12], [7, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 19, 20, 21, 23, 24, 25],
           [44, 45], [50, 51, 52, 53, 54]]


def _scheduler(loaded, **options):
    from llmc.generation.api import open_decoder
    from llmc.generation.scheduler import Scheduler

    _, layout = open_decoder(loaded.session, loaded.artifact.path, loaded.artifact.manifest)
    settings = {"slots": 4, "capacity": 64, "chunk": 256, "pad": 0, **options}
    return Scheduler(loaded.session, layout, loaded.artifact.path, **settings)


def _sequence(prompt, new=12, **params):
    return Sequence(prompt, SequenceParams(max_new_tokens=new, **params), {EOS}, None)


def test_slot_cache_compaction_keeps_each_slots_columns_in_order():
    cache = SlotCache(tensors=1, slots=2, kv_heads=1, capacity=8, head_size=1, dtype=np.float32)
    cache.buffers[0][:, 0, :, 0] = np.arange(16).reshape(2, 8)
    cache.owned[0, [1, 4, 6]] = True
    cache.mask[0, [1, 4, 6]] = 1
    cache.owned[1, [5, 7]] = True
    cache.mask[1, [5]] = 1  # column 7 reserved, not yet written
    cache.length = 8
    shifts = cache.compact()
    assert cache.length == 3
    assert cache.buffers[0][0, 0, :3, 0].tolist() == [1, 4, 6]
    assert cache.buffers[0][1, 0, 1:3, 0].tolist() == [13, 15]
    assert cache.mask[1, :3].tolist() == [0, 1, 0] and cache.owned[1, :3].tolist() == [False, True, True]
    assert shifts == {0: 1, 1: 4}


def test_stop_prefixes_are_held_back_while_streaming():
    assert _held_back("hello wor", ("world",)) == 3
    assert _held_back("hello", ("world",)) == 0
    assert _held_back("a <|", ("<|end|>", "x")) == 2


def test_sequences_joining_a_running_batch_get_their_own_greedy_answer(decoder):
    loaded = decoder
    alone = [loaded.generate(p, max_new_tokens=12, speculative="off").token_ids for p in PROMPTS]
    scheduler = _scheduler(loaded, chunk=4)  # prompts longer than 4 tokens prefill over iterations
    sequences = [_sequence(p) for p in PROMPTS]
    scheduler.submit(sequences[:2])
    for _ in range(3):
        scheduler.step()
    scheduler.submit(sequences[2:])  # more prompts than slots: they wait, then join
    scheduler.run_until_idle()
    assert [s.tokens for s in sequences] == alone
    assert all(s.error is None for s in sequences)
    assert scheduler.stats["decode_rows"] > scheduler.stats["decode_steps"]  # steps were shared
    assert scheduler.slots_in_use == 0 and scheduler.cache.length == 0


def test_compaction_and_the_prefix_cache_keep_the_answers(decoder):
    from llmc.generation.prefix import PrefixCache

    loaded = decoder
    prompts = [PROMPTS[3], [*PROMPTS[3][:16], 60, 61], PROMPTS[0]]
    alone = [loaded.generate(p, max_new_tokens=20, speculative="off").token_ids for p in prompts]
    # 40 columns: 18 + 20 fit one sequence, but not the timeline of three arriving apart
    scheduler = _scheduler(loaded, capacity=40, chunk=8, prefix=PrefixCache(1 << 20, block=8))
    sequences = [_sequence(p, new=20) for p in prompts]
    for sequence in sequences:
        scheduler.submit([sequence])
        for _ in range(6):
            scheduler.step()
    scheduler.run_until_idle()
    assert scheduler.stats["compactions"] >= 1
    assert scheduler.stats["cached_tokens"] == 16  # the second prompt's first two blocks
    assert [s.tokens for s in sequences] == alone


@pytest.mark.parametrize("group_limit", [None, 1])  # 1: a build whose attention lacks query_seqlens
def test_a_burst_of_prompts_prefills_in_one_run_with_a_cached_prefix_among_them(decoder, group_limit):
    from llmc.generation.prefix import PrefixCache

    loaded = decoder
    shared = PROMPTS[3][:12]
    burst = [[*shared, 60, 61], PROMPTS[0], PROMPTS[2], PROMPTS[4]]
    alone = [loaded.generate(p, max_new_tokens=10, speculative="off").token_ids for p in burst]
    scheduler = _scheduler(loaded, prefix=PrefixCache(1 << 20, block=4))
    assert scheduler.group_limit == 4  # this build's attention takes query_seqlens
    scheduler.group_limit = group_limit or scheduler.group_limit
    scheduler.submit([_sequence(shared, new=1)])
    scheduler.run_until_idle()  # its three blocks are cached now
    runs = scheduler.stats["prefill_runs"]
    sequences = [_sequence(p, new=10) for p in burst]
    scheduler.submit(sequences)
    scheduler.run_until_idle()
    assert scheduler.stats["prefill_runs"] == runs + (4 if group_limit else 1)  # 4 prompts of 2-6 new tokens, one run
    assert scheduler.stats["cached_tokens"] == 12
    assert [s.tokens for s in sequences] == alone


def test_cancelled_and_refused_sequences_free_their_slots(decoder):
    from llmc.errors import LlmcError

    loaded = decoder
    scheduler = _scheduler(loaded, slots=2)
    first, second = _sequence(PROMPTS[0], new=30), _sequence(PROMPTS[2], new=30)
    scheduler.submit([first, second])
    scheduler.step()
    scheduler.step()
    first.cancel()
    scheduler.step()
    assert first.finished and first.reason == "cancelled" and scheduler.slots_in_use == 1
    scheduler.run_until_idle()
    assert second.reason == "length" and len(second.tokens) == 30
    with pytest.raises(LlmcError, match="KV positions"):
        scheduler.submit([_sequence(list(range(5, 45)), new=30)])


def test_a_model_error_ends_only_its_sequences(decoder):
    loaded = decoder
    scheduler = _scheduler(loaded)
    bad, good = _sequence([5, 9999]), _sequence(PROMPTS[1])  # 9999: past the vocabulary
    scheduler.submit([bad])
    scheduler.run_until_idle()
    scheduler.submit([good])
    scheduler.run_until_idle()
    assert bad.error is not None and bad.reason == "error" and good.error is None
    assert good.tokens == loaded.generate(PROMPTS[1], max_new_tokens=12, speculative="off").token_ids


def test_sampling_penalties_and_logprobs_per_sequence(decoder):
    loaded = decoder
    sampled = Sampling(temperature=0.8, top_p=0.9, seed=7)
    reference = loaded.generate(PROMPTS[0], max_new_tokens=12, temperature=0.8, top_p=0.9, seed=7, speculative="off")
    scheduler = _scheduler(loaded)
    plain = _sequence(PROMPTS[0], sampling=sampled)
    penalised = _sequence(PROMPTS[0], frequency_penalty=2.0, presence_penalty=2.0)
    greedy = _sequence(PROMPTS[0], logprobs=True, top_logprobs=3)
    scheduler.submit([plain, penalised, greedy])
    scheduler.run_until_idle()
    assert plain.tokens == reference.token_ids  # the same seeded draws as Runner.generate
    assert len(set(penalised.tokens)) > len(set(greedy.tokens))  # repeats cost
    assert len(greedy.logprobs) == len(greedy.tokens)
    for record, token in zip(greedy.logprobs, greedy.tokens, strict=True):
        assert record.token == token and record.top[0][0] == token  # greedy: the likeliest
        assert record.logprob <= 0 and [lp for _, lp in record.top] == sorted((lp for _, lp in record.top), reverse=True)


def test_held_callbacks_wait_for_deliver_and_all_run_in_order():
    from llmc.generation.sequence import HeldCallbacks, _call

    calls, held = [], HeldCallbacks()
    _call(calls.append, "now")  # nothing held in this thread: made at once
    assert calls == ["now"]

    def fails(value):
        calls.append(value)
        raise ValueError(value)

    with held.holding():
        _call(calls.append, "a")
        _call(fails, "b")
        _call(calls.append, "c")
        assert calls == ["now"]  # held
    with pytest.raises(ValueError, match="b"):  # the first failure, after every call ran
        held.deliver()
    assert calls == ["now", "a", "b", "c"]
    held.deliver()  # delivered once
    assert calls == ["now", "a", "b", "c"]

    def interrupted(value):
        raise KeyboardInterrupt

    with held.holding():
        _call(calls.append, "d")
        _call(interrupted, None)
        _call(calls.append, "e")
    with pytest.raises(KeyboardInterrupt):
        held.deliver()
    assert calls[-1] == "d"
    held.deliver()  # the calls an interrupt stopped are still held
    assert calls[-1] == "e"


class _Words:
    """A tokenizer stand-in: token ids as words."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(f" w{i}" for i in ids)


def test_a_steps_callbacks_come_before_the_next_run_in_order(decoder):
    """Each step's pieces wait for the next model run (module llmc.generation.sequence), never
    longer: a piece is handed over after every sequence of its step chose its token, when a run
    starts every piece of the steps before it has been handed over, a sequence's pieces come
    before its end, and the streamed text is the sequence's text."""
    loaded = decoder
    scheduler = _scheduler(loaded)
    events, at_run, counts = [], [], []

    def text(i, piece):
        events.append((i, piece))
        counts.append(tuple(len(s.tokens) for s in sequences))

    sequences = [
        Sequence(p, SequenceParams(max_new_tokens=n, min_new_tokens=n), {EOS}, _Words(),
                 on_text=lambda piece, _, i=i: text(i, piece), on_done=lambda s, i=i: events.append((i, None)))
        for i, (p, n) in enumerate(((PROMPTS[0], 3), (PROMPTS[2], 8)))
    ]
    original = scheduler.runner.run_again

    def run_again(*args, **kwargs):
        chosen = sum(len(s.tokens) for s in sequences)
        at_run.append((chosen, sum(piece is not None for _, piece in events)))
        return original(*args, **kwargs)

    scheduler.runner.run_again = run_again
    scheduler.submit(sequences)
    scheduler.run_until_idle()
    assert at_run and all(told == chosen for chosen, told in at_run)  # nothing held past a run
    assert counts[0] == (1, 1)  # the first sequence's first piece: after the second chose too
    for i, sequence in enumerate(sequences):
        mine = [piece for j, piece in events if j == i]
        assert mine[-1] is None and None not in mine[:-1]  # its end after its pieces
        assert "".join(mine[:-1]) == sequence.text() and len(mine) - 1 == len(sequence.tokens)


def test_the_background_thread_hands_an_end_over_while_others_decode(decoder):
    import threading

    loaded = decoder
    scheduler = _scheduler(loaded)
    short, long = _sequence(PROMPTS[0], new=2), _sequence(PROMPTS[2], new=40)
    ended = {}
    done = threading.Event()
    short.on_done = lambda s: ended.setdefault("short", len(long.tokens))
    long.on_done = lambda s: done.set()
    scheduler.start()
    try:
        scheduler.submit([short, long])
        assert done.wait(60)
    finally:
        scheduler.close()
    assert ended["short"] < 40  # told while the other still decoded, not when the scheduler went idle


class _FailsOnSecondCall:
    """A grammar constraint stand-in that allows every token once, then raises."""

    done = False

    def __init__(self):
        self.calls = 0

    def allowed(self):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("constraint failed")
        return np.ones(1 << 17, dtype=bool)

    def advance(self, token):
        pass


def test_a_failure_in_a_run_leaves_a_sequence_that_ended_earlier_in_it_alone(decoder):
    """Row 0 ends in a decode step, then row 1 fails in the same step: row 1 gets the error, row 0
    keeps its answer and is told it ended once."""
    loaded = decoder
    scheduler = _scheduler(loaded)
    ends = []
    first = Sequence(PROMPTS[0], SequenceParams(max_new_tokens=2, min_new_tokens=2), {EOS}, None,
                     on_done=lambda s: ends.append(("first", s.reason, s.error)))
    second = Sequence(PROMPTS[2], SequenceParams(max_new_tokens=8, constraint_factory=_FailsOnSecondCall), {EOS},
                      None, on_done=lambda s: ends.append(("second", s.reason, s.error)))
    scheduler.submit([first, second])
    scheduler.run_until_idle()
    assert ends[0] == ("first", "length", None) and len(ends) == 2
    assert ends[1][0] == "second" and ends[1][1] == "error" and "constraint failed" in str(ends[1][2])
    assert first.tokens == loaded.generate(PROMPTS[0], max_new_tokens=2, speculative="off").token_ids
    assert scheduler.slots_in_use == 0
