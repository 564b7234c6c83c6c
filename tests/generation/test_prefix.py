"""The prefix KV cache: blocks keyed by their tokens and parent, shared prefixes reused, greedy
output identical with and without it, reference counts guard blocks in use, LRU under a budget."""

from __future__ import annotations

import numpy as np
import pytest

from llmc.generation.prefix import PrefixCache

pytest.importorskip("transformers")
from tests.generation.test_generate import (  # noqa: E402, F401  (the fixtures this module reuses)
    artifact,
    export_dir,
    gqa_loaded,
    hf_source,
    loaded,
)


def _tensors(length: int, layers: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(length)
    return [rng.standard_normal((1, 2, length, 4)).astype(np.float32) for _ in range(layers)]


def test_keys_chain_blocks_to_their_parents():
    cache = PrefixCache(1 << 20, block=4)
    a, b = cache.keys(list(range(12))), cache.keys([*range(8), 99, 9, 10, 11])
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert cache.keys([0, 1, 2, 3, 4, 5, 6, 7])[1] != cache.keys([1, 0, 2, 3, 4, 5, 6, 7])[1]  # parent matters


def test_acquire_returns_the_longest_cached_chain_and_keeps_one_token():
    cache = PrefixCache(1 << 20, block=4)
    prompt = list(range(10))
    tensors = _tensors(10)
    assert not cache.holds(prompt)
    cache.insert(prompt, tensors)
    assert cache.holds(prompt) and cache.holds(prompt[:9]) and not cache.holds([*prompt[:8], 5, 5, 5, 5])
    hit = cache.acquire(prompt[:8])  # 8 tokens: only the first block usable (one token must be computed)
    assert hit.length == 4
    np.testing.assert_array_equal(hit.tensors[1], tensors[1][:, :, :4])
    cache.release(hit)
    hit = cache.acquire([*prompt, 42])
    assert hit.length == 8 and cache.stats()["hits"] == 2
    cache.release(hit)
    assert cache.acquire([7, 7, 7, 7, 7]).length == 0 and cache.stats()["misses"] == 1


def test_blocks_in_use_are_not_evicted_and_the_rest_go_lru():
    block_bytes = 2 * 2 * 4 * 4 * 4  # two tensors of [2, 4, 4] float32
    cache = PrefixCache(max_bytes=2 * block_bytes, block=4)
    first = list(range(8))
    cache.insert(first, _tensors(8))
    held = cache.acquire([*first, 1])
    cache.insert(list(range(100, 108)), _tensors(8))  # over budget: only unheld blocks may go
    assert cache.acquire([*first, 1]).length == 8
    cache.release(held)
    cache.release(held)
    cache.insert(list(range(200, 208)), _tensors(8))
    assert cache.stats()["bytes"] <= 2 * block_bytes and cache.stats()["evictions"] >= 2


@pytest.mark.parametrize("fixture", ["loaded", "gqa_loaded"])
def test_generation_with_the_cache_is_token_identical(fixture, request):
    runner = request.getfixturevalue(fixture)
    runner = runner[0] if isinstance(runner, tuple) else runner
    cache = PrefixCache(1 << 24, block=4)
    system = [5, 17, 9, 40, 22, 8, 31, 12, 7, 19, 23, 4]
    for turn in ([30, 31], [11, 6, 13], [30, 31]):
        want = runner.generate(system + turn, max_new_tokens=8)
        got = runner.generate(system + turn, max_new_tokens=8, prefix_cache=cache)
        assert got.token_ids == want.token_ids
    stats = cache.stats()
    assert stats["hits"] == 2 and stats["tokens_reused"] >= 2 * 12 - 4


def test_blocks_of_uniform_tensors_are_stacked_and_others_kept_apart():
    """Cache tensors of one shape and dtype are kept stacked per block (a hit is one copy); any
    other set is kept tensor by tensor; both give back exactly what was inserted."""
    prompt = list(range(13))
    rng = np.random.default_rng(3)
    uniform = _tensors(13, layers=3)
    mixed = [rng.standard_normal((1, heads, 13, 4)).astype(np.float32) for heads in (2, 1, 2)]
    for tensors, stacked in ((uniform, True), (mixed, False)):
        cache = PrefixCache(1 << 20, block=4)
        cache.insert(prompt, tensors)
        assert all((block.stacked is not None) == stacked for block in cache._blocks.values())
        assert cache.stats()["bytes"] == sum(t[:, :, :12].nbytes for t in tensors)
        hit = cache.acquire(prompt)
        assert hit.length == 12 and len(hit.tensors) == 3
        for got, want in zip(hit.tensors, tensors, strict=True):
            assert got.flags.c_contiguous
            np.testing.assert_array_equal(got, want[:, :, :12])
        cache.release(hit)


def test_a_longer_prompt_adds_only_its_new_blocks():
    cache = PrefixCache(1 << 20, block=4)
    tensors = _tensors(17)
    cache.insert(list(range(9)), [t[:, :, :9] for t in tensors])
    cache.insert(list(range(17)), tensors)  # blocks 0-1 cached already: 2-3 added
    assert cache.stats()["blocks"] == 4
    hit = cache.acquire(list(range(17)))
    assert hit.length == 16
    for got, want in zip(hit.tensors, tensors, strict=True):
        np.testing.assert_array_equal(got, want[:, :, :16])
