"""A token's own bytes, which OpenAI's logprobs carry (``bytes``) so that a client can rebuild
characters split across tokens: decoding such a token alone gives U+FFFD, not its bytes.

* Added tokens (special tokens, a vocabulary's additions) are their own text.
* Byte-level BPE (GPT-2's alphabet, the ``ByteLevel`` decoder: Llama 3, SmolLM2, Qwen, GPT-2)
  writes every byte as one printable character: the token's string maps back byte by byte.
* SentencePiece-style byte fallback writes a byte as ``<0xHH>``, and a space as ``▁``.
* Anything else (whole characters, WordPiece): the UTF-8 of the token decoded alone.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Optional

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _printable_bytes() -> dict[int, str]:
    """GPT-2's ``bytes_to_unicode``: each byte's printable stand-in."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in keep:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


@functools.lru_cache(maxsize=8)
def _reading(tokenizer: Any) -> tuple[Optional[dict[str, int]], bool, frozenset[int]]:
    """How ``tokenizer``'s token strings read as bytes: the stand-in character -> byte table of a
    byte-level decoder (else None), whether ``▁`` is a space (a Metaspace decoder, or a Replace of
    it), and the ids of its added tokens."""
    decoder = json.loads(tokenizer.to_str()).get("decoder") or {}
    parts = [decoder, *(d for d in decoder.get("decoders") or [] if isinstance(d, dict))]
    kinds = {part.get("type") for part in parts}
    metaspace = "Metaspace" in kinds or any(
        part.get("type") == "Replace" and (part.get("pattern") or {}).get("String") == "▁" for part in parts)
    table = {char: byte for byte, char in _printable_bytes().items()} if "ByteLevel" in kinds else None
    return table, metaspace, frozenset(tokenizer.get_added_tokens_decoder())


def token_bytes(tokenizer: Any, token: int) -> list[int]:
    """Token ``token``'s bytes (module docstring)."""
    piece = tokenizer.id_to_token(token)
    table, metaspace, added = _reading(tokenizer)
    if piece is not None and token in added:
        return list(piece.encode("utf-8"))
    if piece is not None and table is not None and all(char in table for char in piece):
        return [table[char] for char in piece]
    match = _BYTE_TOKEN.fullmatch(piece or "")
    if match:
        return [int(match.group(1), 16)]
    if piece is not None and metaspace:
        return list(piece.replace("▁", " ").encode("utf-8"))
    return list(tokenizer.decode([token], skip_special_tokens=False).encode("utf-8"))
