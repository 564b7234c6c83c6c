"""One streaming rule (``llmc.generation.streamed``): a streamed answer, text and logprobs, joins to
the answer given whole, for continuous batching's ``Sequence`` and for ``Runner.generate``'s rows,
when a stop string cuts a token and when the length cuts a character."""

from __future__ import annotations

import numpy as np
import pytest

from llmc.generation.loop import Request, Rows
from llmc.generation.sampling import Sampling
from llmc.generation.sequence import Sequence, SequenceParams
from llmc.generation.streamed import covering, held_back, piece, ready

PARTY = "🎉".encode()  # four bytes


class ByteTokens:
    """A tokenizer whose tokens are byte strings (a character may span tokens), decoded as a byte-level
    tokenizer decodes: invalid UTF-8 becomes U+FFFD."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


NI = "你".encode()  # three bytes
PIECES = [b" Paris", b".", b"\n", b"\n", b"The", b" answer", b" is", b":", b" 20", PARTY[:2], PARTY[2:], PARTY[:1],
          b"", b"a", b" ", NI[:2], NI[2:], "好".encode(), b"caf", "é".encode()[:1], "é".encode()[1:], b"!"]
TOKENIZER = ByteTokens(PIECES)
PARIS, DOT, NEWLINE, THE, ANSWER, IS, COLON, TWENTY, HEAD, TAIL, FIRST_BYTE = 0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11
EOS, A, SPACE, NI_HEAD, NI_TAIL, HAO, CAF, E_HEAD, E_TAIL, BANG = 12, 13, 14, 15, 16, 17, 18, 19, 20, 21


def _onehot(token: int) -> np.ndarray:
    row = np.zeros(len(PIECES), dtype=np.float32)
    row[token] = 10.0
    return row


def _sequence(tokens: list[int], stop: tuple[str, ...], limit: int = 0) -> tuple[Sequence, list[tuple[str, list[int]]]]:
    """A greedy sequence fed ``tokens`` (until it stops; ``limit``: its max new tokens, else as many
    as ``tokens``), and the pieces it streamed with their tokens."""
    streamed: list[tuple[str, list[int]]] = []
    params = SequenceParams(max_new_tokens=limit or len(tokens), stop=stop, logprobs=True)
    sequence = Sequence([0], params, {EOS}, TOKENIZER, on_text=lambda text, records: streamed.append(
        (text, [r.token for r in records])))
    for token in tokens:
        if sequence.finished:
            break
        sequence.choose(_onehot(token))
    return sequence, streamed


@pytest.mark.parametrize(("tokens", "stop", "text", "kept"), [
    # the stop string is two whole tokens: they are not the answer's
    ([PARIS, DOT, NEWLINE, NEWLINE, THE], ("\n\n",), " Paris.", [PARIS, DOT]),
    # it cuts " is": its " i" is in the answer, so its logprob is too; ":" is not
    ([PARIS, DOT, NEWLINE, NEWLINE, THE, ANSWER, IS, COLON], ("s:",), " Paris.\n\nThe answer i",
     [PARIS, DOT, NEWLINE, NEWLINE, THE, ANSWER, IS]),
    # no stop string found: every token
    ([PARIS, DOT, THE], ("xyz",), " Paris.The", [PARIS, DOT, THE]),
    # the length ends it inside a character: U+FFFD both ways
    ([TWENTY, HEAD, TAIL, FIRST_BYTE], (), " 20🎉\ufffd", [TWENTY, HEAD, TAIL, FIRST_BYTE]),
    # a stop string whose second character is split across tokens: " " waits for it
    ([A, SPACE, NI_HEAD, NI_TAIL, HAO], (" 你好",), "a", [A]),
    # the token ending a split character counts from where the character starts
    ([CAF, E_HEAD, E_TAIL, BANG], ("!",), "café", [CAF, E_HEAD, E_TAIL]),
    # end of sequence: it adds no text, and no logprob to the answer
    ([PARIS, DOT, EOS], (), " Paris.", [PARIS, DOT]),
    ([PARIS, NEWLINE, EOS], ("\n\n",), " Paris\n", [PARIS, NEWLINE]),
])
def test_a_streamed_sequence_joins_to_its_whole_answer(tokens, stop, text, kept):
    sequence, streamed = _sequence(tokens, stop)
    assert sequence.text() == text
    assert "".join(p for p, _ in streamed) == text
    assert [r.token for r in sequence.logprobs[: sequence.kept_logprobs()]] == kept
    assert [t for _, records in streamed for t in records] == kept
    assert all(p for p, _ in streamed)  # no empty pieces


def test_a_stop_string_prefix_and_a_partial_character_wait_until_known():
    sequence, streamed = _sequence([PARIS, DOT, NEWLINE], ("\n\n",), limit=10)
    assert not sequence.finished and [p for p, _ in streamed] == [" Paris", "."]  # "\n" may start the stop
    sequence, streamed = _sequence([TWENTY, HEAD], (), limit=10)
    assert [p for p, _ in streamed] == [" 20"]  # half of the emoji waits for its other bytes
    sequence.choose(_onehot(TAIL))
    assert [p for p, _ in streamed] == [" 20", "🎉"]


@pytest.mark.parametrize(("tokens", "stop", "text"), [
    ([PARIS, DOT, NEWLINE, NEWLINE, THE, ANSWER, IS, COLON], ("s:",), " Paris.\n\nThe answer i"),
    ([A, SPACE, NI_HEAD, NI_TAIL, HAO], (" 你好",), "a"),
    ([PARIS, DOT, NEWLINE, NEWLINE, THE], ["\n\n"], " Paris."),
    ([TWENTY, HEAD, TAIL, FIRST_BYTE], (), " 20🎉\ufffd"),
])
def test_generate_rows_stream_what_they_answer(tokens, stop, text):
    streamed: list[str] = []
    request = Request(prompts=[[0]], max_new_tokens=len(tokens), sampling=Sampling(), eos=set(), pad=0,
                      stop=tuple(stop), tokenizer=TOKENIZER, stream=streamed.append)
    rows = Rows(request)
    for token in tokens:
        rows.add(np.array([token]))
        if rows.finished.all():
            break
    result = rows.results(0.0, 0.0)[0]
    assert result.text == text and "".join(streamed) == text


def test_the_rules():
    assert held_back("hello wor", ("world",)) == 3 and held_back("hello", ("world",)) == 0
    assert ready("ab\ufffd", (), finished=False) == "ab" and ready("ab\ufffd", (), finished=True) == "ab\ufffd"
    assert ready("Paris.\n", ("\n\n",), finished=False) == "Paris."
    assert piece("abc", "ab") == "c" and piece("ab", "ab") == "" and piece("xy", "ab") == ""
    ids = [PARIS, DOT, NEWLINE, NEWLINE]
    assert covering(TOKENIZER, ids, len(" Paris.")) == 2 and covering(TOKENIZER, ids, len(" Pa")) == 1
    assert covering(TOKENIZER, ids, 100) == 4 and covering(TOKENIZER, ids, 0) == 0


def test_a_sequence_ended_from_outside_streams_the_rest_and_an_adopted_one_nothing_twice():
    from llmc.generation.result import GenerationResult

    sequence, streamed = _sequence([PARIS, DOT, NEWLINE], ("\n\n",), limit=10)
    assert "".join(p for p, _ in streamed) == " Paris."  # "\n" may start the stop string
    sequence.finish()  # ended by its loop (run_alone), not by a token
    assert "".join(p for p, _ in streamed) == sequence.text() == " Paris.\n"
    cancelled, streamed = _sequence([PARIS, DOT, NEWLINE], ("\n\n",), limit=10)
    cancelled.finish("cancelled")
    assert "".join(p for p, _ in streamed) == " Paris."  # nobody reads a cancelled stream
    pieces: list[str] = []  # generate() streamed it already (--slots 1 with drafts)
    adopted = Sequence([0], SequenceParams(max_new_tokens=5), {EOS}, TOKENIZER, on_text=lambda t, r: pieces.append(t))
    adopted.adopt(GenerationResult([PARIS, DOT], " Paris.", 1.0, 1.0, 1, "length"))
    assert pieces == [] and adopted.text() == " Paris."
