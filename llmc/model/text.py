"""The artifact's tokenizer, chat template and generation config (carried by ``llmc build``).

Plain prompts go through ``tokenizers.Tokenizer`` (``tokenizer.json``): light, no transformers.
``--chat`` needs the chat template: the tokenizer (special tokens, the template) is read by
transformers, so it alone imports transformers, and the template is rendered by
:func:`llmc.model.chat.render` in transformers' sandbox, bounded in time and size.
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError, first_line
from llmc.model.files import GENERATION_FILE, MANIFEST_FILE

TOKENIZER_JSON = "tokenizer.json"
# tokenizer_config.json's "no limit" sentinel is ~1e30; a real context is far below this.
_SANE_CONTEXT = 10_000_000


def load_tokenizer(artifact: Path) -> Any:
    """``artifact``'s ``tokenizers.Tokenizer``, or one line saying how to get one."""
    path = artifact / TOKENIZER_JSON
    if not path.is_file():
        raise LlmcError(
            f"{artifact} has no tokenizer ({TOKENIZER_JSON}); build it from `llmc export` output "
            "(which carries the tokenizer), or pass token ids to Runner.generate from Python"
        )
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise LlmcError("the tokenizers package is not installed: pip install tokenizers") from None
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises plain Exception on a bad file
        raise LlmcError(f"{path}: not a tokenizer file ({first_line(exc)}); rebuild the artifact") from None


def encode(tokenizer: Any, text: str, *, special: bool = True) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=special).ids)


def decode(tokenizer: Any, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def chat_prompt(artifact: Path, message: str) -> str:
    """``message`` as one user turn of the artifact's chat template, ready for the reply."""
    return chat_messages(artifact, [{"role": "user", "content": message}])


def chat_messages(artifact: Path, messages: list[dict[str, str]]) -> str:
    """``messages`` (OpenAI's ``role``/``content`` turns) through the artifact's chat template,
    ready for the reply: what transformers' ``apply_chat_template(messages, tokenize=False,
    add_generation_prompt=True)`` gives, or one line for a template that fails, runs past
    :data:`llmc.model.chat.MAX_SECONDS` or writes past :data:`llmc.model.chat.MAX_CHARS`."""
    from llmc.model.chat import render

    with _LOADING:  # concurrent first calls (a server's first chats) would race transformers' import
        tokenizer = _chat_tokenizer(str(artifact))
    try:
        template = tokenizer.get_chat_template()
    except (ValueError, TypeError) as exc:  # named templates without a "default" one
        raise LlmcError(f"{artifact}: no chat template to use ({first_line(exc)})") from None
    turns = [{key: value for key, value in message.items() if value is not None} for message in messages]
    return render(
        template, str(artifact), messages=turns, tools=None, documents=None,
        add_generation_prompt=True, **tokenizer.special_tokens_map,
    )


_LOADING = threading.Lock()


@functools.lru_cache(maxsize=4)
def _chat_tokenizer(artifact: str) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise LlmcError("--chat needs transformers for the chat template: pip install transformers") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(artifact)
    except Exception as exc:  # transformers raises many types for an unreadable tokenizer
        raise LlmcError(f"{artifact}: transformers cannot load its tokenizer ({first_line(exc)})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise LlmcError(f"{artifact}: its tokenizer has no chat template; drop --chat and pass the prompt as is")
    return tokenizer


def generation_config(artifact: Path) -> dict[str, Any]:
    """``generation_config.json`` of the artifact ({} without one)."""
    path = artifact / GENERATION_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise LlmcError(f"{path}: not valid JSON ({first_line(exc)}); rebuild the artifact") from None
    return config if isinstance(config, dict) else {}


def eos_ids(config: dict[str, Any]) -> set[int]:
    """The end-of-sequence token ids a generation config names (an int or a list)."""
    value = config.get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return {int(v) for v in values if isinstance(v, int)}


def pad_id(config: dict[str, Any]) -> int:
    """The id left padding uses (masked out, so any id works): pad, else EOS, else 0."""
    for key in ("pad_token_id", "eos_token_id"):
        value = config.get(key)
        value = value[0] if isinstance(value, list) and value else value
        if isinstance(value, int):
            return value
    return 0


def context_length(artifact: Path) -> int | None:
    """The model's context in tokens (:func:`context_limit`), None where none is known."""
    limit = context_limit(artifact)
    return limit[0] if limit is not None else None


def context_limit(artifact: Path) -> tuple[int, str] | None:
    """The model's context in tokens and where it was read, for error lines: the smaller of
    ``tokenizer_config.json``'s ``model_max_length`` (when it is a real limit) and the context
    ``llmc export`` recorded in the model's task (the manifest's ``task.context``: a decoder's
    ``max_position_embeddings``, a GGUF's ``context_length``); None where neither is known
    (an artifact built from an export made before the context was recorded, with a tokenizer
    that names no limit). On a tie the tokenizer is named."""
    limits = [limit for limit in (_tokenizer_limit(artifact), _recorded_context(artifact)) if limit is not None]
    return min(limits, key=lambda limit: limit[0]) if limits else None


def _tokenizer_limit(artifact: Path) -> tuple[int, str] | None:
    path = artifact / "tokenizer_config.json"
    try:
        value = json.loads(path.read_text()).get("model_max_length") if path.is_file() else None
    except (ValueError, AttributeError):
        return None
    if isinstance(value, (int, float)) and 0 < value < _SANE_CONTEXT:
        return int(value), "tokenizer_config.json's model_max_length"
    return None


def _recorded_context(artifact: Path) -> tuple[int, str] | None:
    """The manifest's ``task.context`` (:class:`llmc.spec.task.TaskSpec`), read as plain JSON (the
    manifest is checked whole when the artifact is loaded); None without one."""
    path = artifact / MANIFEST_FILE
    try:
        task = json.loads(path.read_text()).get("task") if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    value = task.get("context") if isinstance(task, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return None
    source = task.get("context_source")
    return value, source if isinstance(source, str) and source else "the model's recorded context"
