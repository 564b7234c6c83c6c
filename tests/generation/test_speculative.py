"""Prompt-lookup speculative decoding: drafting and the policy; the verify loop on a scripted
stand-in model (every step attends to exactly the true tokens; EOS, stop strings,
max_new_tokens and min_new_tokens inside a verify step); greedy output token-identical to plain
decoding on built decoders with drafts accepted and rejected; where it does not run; the CLI."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
from typer.testing import CliRunner

import llmc
from llmc.cli.main import app
from llmc.errors import LlmcError
from llmc.generation import speculative
from llmc.generation.loop import Request, run_generation
from llmc.generation.prefix import PrefixCache
from llmc.generation.sampling import Sampling
from llmc.generation.speculative import Drafter, Policy, run_speculative, step_cost
from tests.cli.test_bad_inputs import _assert_one_line_error

pytest.importorskip("transformers")
from tests.export.test_export_cli import _save  # noqa: E402
from tests.generation.test_generate import (  # noqa: E402, F401  (the fixtures this module reuses)
    EOS,
    VOCAB,
    artifact,
    export_dir,
    gqa_loaded,
    hf_source,
    loaded,
)

runner = CliRunner()
# Greedy decoding of the `copier` decoder falls into cycles (period 1, 2 and 3) it leaves again:
# drafts are accepted and rejected.
COPIED = [[11], [30, 31, 12, 7, 30, 31, 12, 7], [5, 17, 9, 40, 22]]


# -- drafting and the policy ----------------------------------------------------------------------


def test_drafts_follow_the_most_recent_longest_match():
    drafter = Drafter([1, 2, 3, 4, 9, 2, 3, 5, 6, 7, 8, 1, 2, 3])
    assert drafter.match() == (3, 3)  # "1 2 3" seen before (not the suffix itself), then 4 at index 3
    assert drafter.copy(3, 3) == [4, 9, 2] and drafter.draft(Policy(), room=3) == [4, 9, 2]
    drafter.extend([7])
    assert drafter.match() == (1, 10)  # no "2 3 7" or "3 7" before; the latest "7" was followed by 8
    drafter.extend([3])
    assert drafter.match() == (1, 14)  # "3" was followed by 4, 5, then 7: the most recent wins
    drafter.extend([7, 3])
    assert drafter.match() == (3, 16)  # "3 7 3" seen at 13-15 (before it "2" vs "7": a run of 3)
    assert drafter.copy(16, 4) == [7, 3, 7, 3]  # past the end it copies itself
    drafter.extend([7, 3])
    assert drafter.match() == (5, 18)  # "3 7 3" latest at 15-17, and "3 7" before it agree too
    assert Drafter([1, 2, 3]).match() is None and Drafter([1, 2, 3]).draft(Policy(), room=4) == []
    assert Drafter([6]).match() is None
    assert Drafter([6, 6, 6, 6]).match() == (3, 3) and Drafter([6, 6, 6, 6]).draft(Policy(), room=9) == [6] * 6
    assert Drafter(list(range(40)) * 2).match() == (speculative.MAX_RUN, 40)


def test_policy_drafts_by_match_length_and_pauses_when_it_does_not_pay():
    assert step_cost(1) == 1.0 and 1.9 < step_cost(2) < 2.0 and step_cost(17) < 4.2
    policy = Policy()
    assert policy.length(1, room=30) == policy.length(2, room=30) == 0  # too weak to pay for a verify step
    assert policy.length(3, room=30) == 6 and policy.length(9, room=30) == 18
    assert policy.length(30, room=100) == speculative.MAX_DRAFT and policy.length(9, room=4) == 4
    for _ in range(8):  # 4 tokens for the cost of 3.2 one-token steps: drafts that pay, never a pause
        policy.record(drafted=10, accepted=3, made=4)
    policy.record(drafted=10, accepted=0, made=1)
    assert policy.length(3, room=30) == 6  # one miss among steps that paid
    policy = Policy()
    policy.record(drafted=10, accepted=0, made=1)
    policy.record(drafted=10, accepted=1, made=2)  # 3 tokens for the cost of 6.4 one-token steps
    assert policy.length(9, room=30) == 0
    for _ in range(speculative.COOLDOWN):
        policy.record(drafted=0, accepted=0, made=1)
    assert policy.length(9, room=30) == 18  # the pause is over: a later copy is drafted again
    policy.record(drafted=18, accepted=0, made=1)
    policy.record(drafted=18, accepted=1, made=2)
    assert policy.pause == 2 * speculative.COOLDOWN  # it did not pay again: twice as long


# -- the verify loop on a scripted model -----------------------------------------------------------


class _Logits:
    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    def numpy(self) -> np.ndarray:
        return self.values


class Scripted:
    """A stand-in :class:`Stepper` whose next token after position p is ``tokens[p + 1]`` whatever
    it is fed (1 past the end). Each step checks the contract: the mask covers exactly the
    positions up to the step's last, a step never re-feeds a position an earlier step attended
    to as history (so the attended history only grows), nothing goes past the capacity allocated
    at prefill; :meth:`history` is every position's last fed token."""

    layout = types.SimpleNamespace(recompute_cache_after=None)  # what the loops read of a Stepper's layout

    def __init__(self, tokens: list[int]) -> None:
        self.tokens, self.fed, self.widths, self.capacity, self.frozen = tokens, {}, [], 0, 0

    def run(self, ids, mask, positions, past, capacity=0, last_only=False):
        width, start = ids.shape[1], int(positions[0, 0])
        assert mask.shape == (1, start + width) and mask.all()
        assert positions[0].tolist() == list(range(start, start + width))
        assert start >= self.frozen and sorted(self.fed) == list(range(len(self.fed))) and len(self.fed) >= start
        if past is None:
            self.capacity = capacity
        assert start + width <= self.capacity
        self.frozen = start
        self.fed.update(zip(range(start, start + width), ids[0].tolist(), strict=True))
        self.widths.append(width)
        logits = np.zeros((1, width, VOCAB), np.float32)
        for offset in range(width):
            after = start + offset + 1
            logits[0, offset, self.tokens[after] if after < len(self.tokens) else 1] = 1.0
        return _Logits(logits[:, -1:] if last_only else logits), ["cache"]  # a logits_to_keep artifact's

    def history(self, length: int) -> list[int]:
        return [self.fed[p] for p in range(length)]


class Words:
    """``decode`` as the test tokenizers spell ids: "w5 w17"."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids)


def _both(prompt: list[int], script: list[int], **fields) -> tuple:
    """(plain, speculative) results of the scripted model continuing ``prompt`` with ``script``."""
    fields = {"max_new_tokens": 40, "eos": {EOS}, **fields}
    request = Request(prompts=[prompt], sampling=Sampling(), pad=0, tokenizer=Words(), **fields)
    plain = run_generation(Scripted(prompt + script), request)[0]
    model = Scripted(prompt + script)
    fast = run_speculative(model, request)[0]
    # What the last step attended to, and fed, is the prompt and the tokens made, drafts rolled back.
    made = prompt + fast.token_ids[:-1]
    assert model.history(len(made)) == made
    return plain, fast, model.widths


PASSAGE = list(range(10, 40))


def test_a_copy_is_drafted_and_accepted_in_long_steps():
    plain, fast, widths = _both([*PASSAGE, 50], PASSAGE)
    assert fast.token_ids == plain.token_ids == PASSAGE + [1] * 10 and fast.stop_reason == "length"
    assert max(widths) > 10 and len(widths) < 20 and fast.accepted > 20
    assert fast.drafted - fast.accepted < 10  # the drafts past the copy's end


@pytest.mark.parametrize("new", [1, 2, 3, 4, 5, 9, 10, 17, 29, 30, 31])
def test_max_new_tokens_is_never_passed(new):
    plain, fast, widths = _both([*PASSAGE, 50], PASSAGE, max_new_tokens=new)
    assert fast.token_ids == plain.token_ids == (PASSAGE + [1])[:new]
    assert sum(widths) - 1 <= len(PASSAGE) + new  # nothing fed past plain decoding's last position


def test_eos_and_stop_strings_inside_accepted_drafts():
    passage = [*PASSAGE[:12], EOS, *PASSAGE[12:]]  # the copy reaches EOS in the middle of a step
    plain, fast, _ = _both([*passage, 50], passage)
    assert fast.token_ids == plain.token_ids == passage[:13] and fast.stop_reason == "eos"
    assert fast.accepted >= 6  # EOS came as an accepted draft
    plain, fast, _ = _both([*PASSAGE, 50], PASSAGE, stop=("w25 w26",))
    assert (fast.text, fast.token_ids, fast.stop_reason) == (plain.text, plain.token_ids, "stop")
    assert fast.text == " ".join(f"w{t}" for t in range(10, 25)) + " "


@pytest.mark.parametrize("least", [0, 5, 12, 13, 14, 20])
def test_min_new_tokens_masks_eos_at_each_position_of_a_step(least):
    passage = [*PASSAGE[:12], EOS, *PASSAGE[12:]]
    plain, fast, _ = _both([*passage, 50], passage, min_new_tokens=least)
    assert fast.token_ids == plain.token_ids and fast.stop_reason == plain.stop_reason
    assert (EOS in fast.token_ids) == (least <= 12)


def test_a_model_that_does_not_copy_is_not_drafted_for_long():
    script = [int(t) for t in np.random.default_rng(0).integers(4, 60, 200)]
    prompt = script[:100]  # drafts from the prompt are right at first, then every one is wrong
    plain, fast, widths = _both(prompt, script[100:] + [7, 8, 9] * 30, max_new_tokens=200)
    assert fast.token_ids == plain.token_ids
    assert widths.count(1) > 0.8 * len(widths)


# -- built decoders: the same tokens as plain decoding ----------------------------------------------


@pytest.fixture(scope="module")
def copier(tmp_path_factory):
    """A GroupQueryAttention decoder of small weights (initializer range 0.02), whose greedy
    output repeats itself: the n-gram drafts are right often enough for the policy to take them."""
    from llmc.export import llama_model

    model = llama_model(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB, max_position_embeddings=256, tie_word_embeddings=False, initializer_range=0.02,
        bos_token_id=2, eos_token_id=EOS,
    )
    root = tmp_path_factory.mktemp("copier")
    source = _save(model, root / "hf", VOCAB)
    assert runner.invoke(app, ["export", str(source), "-o", str(root / "export")]).exit_code == 0
    built = llmc.build(root / "export" / "model.onnx", output=root / "artifact", cache=False)
    assert built.manifest["fusions"].get("GroupQueryAttention") == 2
    return llmc.load(built.path)


def test_greedy_is_token_identical_with_drafts_accepted_and_rejected(copier):
    drafted = accepted = 0
    for prompt in COPIED:
        plain = copier.generate(prompt, max_new_tokens=80, min_new_tokens=80)
        fast = copier.generate(prompt, max_new_tokens=80, min_new_tokens=80, speculative="ngram")
        assert fast.token_ids == plain.token_ids and len(fast.token_ids) == 80
        assert plain.drafted == plain.accepted == 0 and fast.ms_per_token > 0
        drafted, accepted = drafted + fast.drafted, accepted + fast.accepted
    assert 0 < accepted < drafted  # the policy's own drafts, taken, some kept and some rolled back


@pytest.fixture()
def eager(monkeypatch):
    """Draft as much as there is room for (up to 6) after any match: every verify step takes drafts."""
    monkeypatch.setattr(Policy, "length", lambda self, run, room: min(room, 6))


@pytest.mark.parametrize("which", ["copier", "gqa_loaded"])
def test_every_cut_of_a_step_is_token_identical(which, eager, request):
    model = request.getfixturevalue(which)
    model = model[0] if isinstance(model, tuple) else model
    for prompt in [*COPIED, [5, 17, 9, 40, 22] * 3]:
        for new in (1, 2, 3, 7, 25):
            plain = model.generate(prompt, max_new_tokens=new)
            fast = model.generate(prompt, max_new_tokens=new, speculative="ngram")
            assert fast.token_ids == plain.token_ids and fast.stop_reason == plain.stop_reason, (prompt, new)


def test_eos_and_min_new_tokens_on_a_built_decoder(copier, eager, monkeypatch):
    from llmc.model import text

    reference = copier.generate(COPIED[1], max_new_tokens=80, min_new_tokens=80).token_ids
    for eos in sorted(set(reference[5:40]))[:4]:  # tokens of the cycles, as the EOS id
        monkeypatch.setattr(text, "eos_ids", lambda config, eos=eos: {eos})
        where = reference.index(eos)
        for least in (0, where, where + 1, where + 4):
            plain = copier.generate(COPIED[1], max_new_tokens=60, min_new_tokens=least)
            fast = copier.generate(COPIED[1], max_new_tokens=60, min_new_tokens=least, speculative="ngram")
            assert fast.token_ids == plain.token_ids and fast.stop_reason == plain.stop_reason, (eos, least)
            assert eos not in fast.token_ids[:least]


def test_stop_strings_streaming_and_the_prefix_cache(copier):
    text = "w30 w31 w12 w7 w30 w31 w12 w7"
    full = copier.generate(text, max_new_tokens=40)
    words = full.text.split()
    for stop in (words[1], words[12], " ".join(words[20:22])):
        plain = copier.generate(text, max_new_tokens=40, stop=[stop])
        fast = copier.generate(text, max_new_tokens=40, stop=[stop], speculative="ngram")
        assert (fast.text, fast.token_ids, fast.stop_reason) == (plain.text, plain.token_ids, "stop")
    pieces: list[str] = []
    streamed = copier.generate(text, max_new_tokens=40, stream=pieces.append, speculative="ngram")
    assert "".join(pieces) == streamed.text == full.text and streamed.accepted > 0
    cache, want = PrefixCache(1 << 24, block=4), copier.generate(COPIED[1], max_new_tokens=40).token_ids
    for _ in range(2):
        cached = copier.generate(COPIED[1], max_new_tokens=40, prefix_cache=cache, speculative="ngram")
        assert cached.token_ids == want and cached.accepted > 0
    assert cache.stats()["hits"] == 1


# -- where it does not run --------------------------------------------------------------------------


def test_unsupported_cases_are_one_error_line_for_ngram_and_plain_decoding_for_auto(copier, loaded):  # noqa: F811
    batch = [[5, 17, 9], COPIED[1]]
    with pytest.raises(LlmcError, match="--speculative ngram runs one prompt at a time"):
        copier.generate(batch, max_new_tokens=8, speculative="ngram")
    results = copier.generate(batch, max_new_tokens=8, speculative="auto")
    assert [r.token_ids for r in results] == [r.token_ids for r in copier.generate(batch, max_new_tokens=8)]
    assert all(r.drafted == 0 for r in results)
    with pytest.raises(LlmcError, match="greedy only; pass --temperature 0"):
        copier.generate(COPIED[1], max_new_tokens=8, temperature=0.8, speculative="ngram")
    sampled = copier.generate(COPIED[1], max_new_tokens=8, temperature=0.8, seed=3, speculative="auto")
    assert sampled.token_ids == copier.generate(COPIED[1], max_new_tokens=8, temperature=0.8, seed=3).token_ids
    assert sampled.drafted == 0
    with pytest.raises(LlmcError, match="GroupQueryAttention.*--disable-fusion gqa"):
        loaded.generate(COPIED[1], max_new_tokens=8, speculative="ngram")  # a cache that is not shared
    auto = loaded.generate(COPIED[1], max_new_tokens=8, speculative="auto")
    assert auto.token_ids == loaded.generate(COPIED[1], max_new_tokens=8).token_ids and auto.drafted == 0
    with pytest.raises(LlmcError, match="--speculative lookahead: must be one of off, ngram, auto"):
        copier.generate(COPIED[1], max_new_tokens=8, speculative="lookahead")
    assert copier.generate(COPIED[1], max_new_tokens=8, speculative="off").drafted == 0


def test_generate_cli(copier, artifact):  # noqa: F811
    path = str(copier.artifact.path)
    text = "w30 w31 w12 w7 w30 w31 w12 w7"
    result = runner.invoke(app, ["generate", path, "--prompt", text, "--max-new-tokens", "40", "--speculative",
                                 "ngram", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["token_ids"] == copier.generate(text, max_new_tokens=40).token_ids
    assert answer["accepted"] > 0 and answer["drafted"] >= answer["accepted"]
    shown = runner.invoke(app, ["generate", path, "--prompt", text, "--max-new-tokens", "40", "--speculative", "ngram"])
    assert shown.exit_code == 0 and "drafted tokens accepted" in shown.output, shown.output
    _assert_one_line_error(
        runner.invoke(app, ["generate", path, "--prompt", "w5", "--speculative", "ngram", "--temperature", "1"]),
        "--speculative ngram", "--temperature 0",
    )
    _assert_one_line_error(
        runner.invoke(app, ["generate", str(artifact), "--prompt", "w5", "--speculative", "ngram"]),
        "--speculative ngram", "GroupQueryAttention",
    )
    _assert_one_line_error(runner.invoke(app, ["generate", path, "--prompt", "w5", "--speculative", "yes"]),
                           "--speculative yes", "off, ngram, auto")
    assert "--speculative" in runner.invoke(app, ["generate", "--help"]).output


def test_picks_mask_eos_only_before_min_new_tokens():
    scores = np.zeros((1, 4, 8), np.float32)
    scores[0, :, EOS] = 1.0
    request = Request(prompts=[[1]], max_new_tokens=9, sampling=Sampling(), eos={EOS}, pad=0, min_new_tokens=3)
    assert speculative._picks(_Logits(scores), request, made=1) == [0, 0, EOS, EOS]  # tokens 2 and 3 masked
    assert speculative._picks(_Logits(scores), request, made=3) == [EOS] * 4
    assert speculative._agreed([4, 5, 6], [4, 5, 7, 1]) == 2 and speculative._agreed([], [3]) == 0


def test_serving_decodes_greedy_requests_speculatively(copier):
    from llmc.generation.sampling import Sampling
    from llmc.generation.sequence import SequenceParams
    from llmc.model.text import encode
    from llmc.serving.decoding import Decoding
    from llmc.serving.engine import ServeSettings

    decoding = Decoding(copier, ServeSettings(str(copier.artifact.path), slots=1, speculative="auto"))
    assert decoding.scheduler is None and decoding.why_alone == "--slots 1"
    text = "w30 w31 w12 w7 w30 w31 w12 w7"
    ids = encode(decoding.tokenizer, text)
    done = []
    (greedy,) = decoding.sequences(ids, SequenceParams(max_new_tokens=40), 1, None, done.append)
    (sampled,) = decoding.sequences(ids, SequenceParams(max_new_tokens=40, sampling=Sampling(1.0)), 1, None, done.append)
    decoding._alone([greedy, sampled])
    assert done == [greedy, sampled]
    assert greedy.tokens == copier.generate(text, max_new_tokens=40).token_ids and greedy.accepted > 0
    assert greedy.result().accepted == greedy.accepted and sampled.drafted == 0  # sampling: plain decoding


def test_serve_flag(copier, tmp_path):
    import yaml

    path = tmp_path / "serve.yaml"
    _assert_one_line_error(
        runner.invoke(app, ["serve", str(copier.artifact.path), "--speculative", "ngram", "--emit-config", str(path)]),
        "--speculative ngram", "auto or off",
    )
    for flag in ("auto", "off"):
        result = runner.invoke(app, ["serve", str(copier.artifact.path), "--speculative", flag, "--emit-config", str(path)])
        assert result.exit_code == 0, result.output
        assert yaml.safe_load(path.read_text())["applications"][0]["args"]["speculative"] == flag
