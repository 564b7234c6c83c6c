"""Chat templates from a model directory are untrusted: llmc.model.chat renders them in
transformers' sandbox with bounds, so one that raises, loops or builds gigabytes is one line
within its time limit, and a normal one renders exactly as transformers renders it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmc.errors import LlmcError
from llmc.model import chat, text

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

CHATML = (
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MESSAGES = [
    {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"}, {"role": "user", "content": "why?"},
]


def _tokenizer_dir(directory: Path, template: str):
    from tests.export.test_export_cli import _tokenizer

    tokenizer = _tokenizer(16)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(directory)
    return tokenizer


def test_a_normal_template_renders_as_transformers_renders_it(tmp_path):
    tokenizer = _tokenizer_dir(tmp_path, CHATML)
    expected = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text.chat_messages(tmp_path, MESSAGES) == expected
    assert expected.startswith("<s><|im_start|>system") and expected.endswith("<|im_start|>assistant\n")


def test_a_template_that_raises_is_one_line(tmp_path):
    _tokenizer_dir(tmp_path, "{{ raise_exception('only user turns, please') }}")
    with pytest.raises(LlmcError, match="chat template failed.*only user turns, please") as info:
        text.chat_messages(tmp_path, MESSAGES)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_a_template_that_loops_forever_is_stopped_in_time(tmp_path, monkeypatch):
    monkeypatch.setattr(chat, "MAX_SECONDS", 0.3)
    _tokenizer_dir(tmp_path, "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    start = time.monotonic()
    with pytest.raises(LlmcError, match="time limit"):
        text.chat_messages(tmp_path, MESSAGES)
    assert time.monotonic() - start < 3


LOOPS = {
    "silent nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "loops that write": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
}
# Templates that would take gigabytes: refused before the value is built.
AMPLIFIERS = {
    "repeat": "{{ 'x' * 10000000000 }}",
    "center filter": "{{ 'x'|center(10000000000) }}",
    "ljust method": "{{ 'x'.ljust(10000000000) }}",
    "%-width": "{{ '%10000000000d' % 1 }}",
    "format filter": "{{ '%10000000000d'|format(1) }}",
    "format width": "{{ '{:10000000000}'.format(1) }}",
    "format nested width": "{{ '{:{w}}'.format(1, w=10000000000) }}",
    "power": "{{ 10 ** 100000000 }}",
    "squaring": "{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
    "replace filter": "{% set s = 'x' * 100000 %}{{ s|replace('', s) }}",
    "replace filter with count": "{% set s = 'x' * 100000 %}{{ s|replace('x', s, 1000) }}",
    "macro doubling": "{% macro f(s) %}{{ f(s ~ s) }}{% endmacro %}{{ f('x') }}",
    "namespace doubling": "{% set ns = namespace(s='x') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "replace": "{% set s = 'x' * 100000 %}{{ s.replace('', s) }}",
    "join": "{% set s = 'x' * 1000000 %}{{ s.join(['a'] * 1000) }}",
    "expandtabs": "{% set s = '\t' * 1000000 %}{{ s.expandtabs(1000) }}",
    "indent": "{% set s = '\n' * 1000000 %}{{ s|indent(1000) }}",
}
FAILURES = {
    "recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "undefined": "{{ foo.bar.baz }}",
    "syntax": "{% for %}",
    "sandbox": "{{ ''.__class__.__mro__ }}",
}


@pytest.mark.parametrize("name", sorted({**LOOPS, **AMPLIFIERS, **FAILURES}))
def test_bounded_and_failing_templates_are_one_line_in_time(name):
    source = {**LOOPS, **AMPLIFIERS, **FAILURES}[name]
    start = time.monotonic()
    try:
        rendered = chat.render(source, "model", max_seconds=0.5, messages=MESSAGES, add_generation_prompt=True)
    except LlmcError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("model: the chat template")
    else:  # the sandbox may render an unsafe attribute as empty: never past the bound
        assert name == "sandbox" and len(rendered) < 1000
    assert time.monotonic() - start < (2.5 if name in LOOPS else 1.0), name


def test_output_is_bounded(monkeypatch):
    with pytest.raises(LlmcError, match="output past 1,000 characters"):
        chat.render("{% for i in range(2000) %}x{% endfor %}", "model", max_chars=1000)
    assert chat.render("{% for i in range(1000) %}x{% endfor %}", "model", max_chars=1000) == "x" * 1000


def test_the_previous_trace_function_is_restored():
    import sys

    def mine(frame, event, arg):
        return None

    before = sys.gettrace()
    sys.settrace(mine)
    try:
        chat.render(CHATML, "model", messages=MESSAGES, bos_token="<s>")
        with pytest.raises(LlmcError):
            chat.render("{{ raise_exception('no') }}", "model")
        assert sys.gettrace() is mine
    finally:
        sys.settrace(before)


def test_named_templates_without_a_default_are_one_line(tmp_path):
    import json

    _tokenizer_dir(tmp_path, CHATML)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    config["chat_template"] = [{"name": "tool_use", "template": CHATML}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    for extra in tmp_path.glob("chat_template*"):
        extra.unlink()
    text._chat_tokenizer.cache_clear()
    with pytest.raises(LlmcError) as info:
        text.chat_messages(tmp_path, MESSAGES)
    assert "\n" not in str(info.value)
