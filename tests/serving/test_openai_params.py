"""Request fields checked before any work (``llmc.serving.openai_params``): a fresh seed when none is
sent (repeated sampled requests differ, as OpenAI's do; greedy ones stay one result-cache key),
and chat roles OpenAI's API has, "developer" read as "system", anything else one error."""

from __future__ import annotations

import pytest

from llmc.serving.errors import BadRequest
from llmc.serving.openai_params import parse

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def test_a_missing_seed_is_fresh_and_a_given_one_kept():
    assert parse(CHAT, True, 64).seed != parse(CHAT, True, 64).seed
    assert parse({**CHAT, "seed": 7}, True, 64).seed == parse({**CHAT, "seed": 7}, True, 64).seed == 7
    assert parse({**CHAT, "seed": -1}, True, 64).seed == 2**63 - 1


def test_a_server_cap_below_the_completions_default_is_the_default():
    assert parse({"prompt": "hi"}, False, 8).max_tokens == 8 and parse({"prompt": "hi"}, False, 64).max_tokens == 16
    with pytest.raises(BadRequest, match="--max-tokens"):
        parse({"prompt": "hi", "max_tokens": 9}, False, 8)


def test_roles():
    turns = [{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}, {"role": "system", "content": "x"}]
    assert [m["role"] for m in parse({"messages": turns}, True, 64).messages] == ["system", "user", "assistant",
                                                                                 "system"]
    for role in ("wizard", "", "tool", "function"):
        with pytest.raises(BadRequest) as caught:
            parse({"messages": [{"role": role, "content": "hi"}]}, True, 64)
        assert caught.value.param == "messages" and "role" in str(caught.value) and "\n" not in str(caught.value)


def test_a_whole_answer_whose_client_goes_is_cancelled():
    """``completions._run`` asks ``gone`` while it waits; once the client is gone its sequences are
    cancelled (their slots free at the next step) and the request ends as the client-gone kind."""
    import asyncio

    from llmc.generation.sequence import Sequence, SequenceParams
    from llmc.serving import completions
    from llmc.serving.errors import CLIENT_GONE

    made: list[Sequence] = []

    class Decoding:  # sequences that never finish unless cancelled
        def sequences(self, ids, params, n, on_text, on_done, first=0):
            made.extend(Sequence(ids, params, set(), None, on_done=on_done) for _ in range(n))
            return made

        async def run(self, sequences):
            return None

    class Engine:
        decoding = Decoding()

    asked = []

    async def gone():
        asked.append(1)
        return len(asked) >= 2

    async def main():
        with pytest.raises(BadRequest) as caught:
            await asyncio.wait_for(completions._run(Engine(), [([1, 2], SequenceParams())], 2, gone), timeout=10)
        return caught.value

    previous, completions.POLL_SECONDS = completions.POLL_SECONDS, 0.01
    try:
        error = asyncio.run(main())
    finally:
        completions.POLL_SECONDS = previous
    assert error.kind is CLIENT_GONE and len(asked) == 2
    assert len(made) == 2 and all(s.cancelled for s in made)
