"""The weights ``llmc export`` loads, checked before and after transformers reads them.

Before: only safetensors are read (``use_safetensors=True``; pickled ``.bin``/``.pt`` weights
are refused, since unpickling runs code), and every ``.safetensors`` header is parsed here
(:func:`check_safetensors`) so a corrupt or truncated file is one line naming it.
After: ``output_loading_info`` must show every parameter of the architecture loaded from the
checkpoint (:func:`check_loading_info`): renamed tensors, or a ``model_type`` naming another
architecture than the weights', would otherwise export randomly initialised parameters.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError

SAFETENSORS = ".safetensors"
# Pickle-based checkpoints: torch.load of them can run code.
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_ITEM_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8, "F4": 0.5, "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}
_MAX_HEADER = 100 << 20  # the safetensors library's own limit
# Parameters an export of token states never uses (BERT's pooler): their absence is harmless there.
_UNUSED_BY_TOKEN_STATES = ("pooler.",)
_LAYER = re.compile(r"(^|\.)(layer|layers|h|blocks)\.\d+\.")  # a transformer layer's parameter


def check_weight_files(directory: Path) -> None:
    """One line for weights llmc export will not read: pickled checkpoints without safetensors
    beside them, or a ``.safetensors`` file (or shard index) that is not well formed."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    safetensors = [p for p in files if p.name.endswith(SAFETENSORS)]
    pickled = [p for p in files if p.name.endswith(PICKLED)]
    if not safetensors and pickled:
        raise LlmcError(
            f"{pickled[0]}: pickled PyTorch weights, which llmc export does not load (unpickling can run code); "
            f"convert them to safetensors where you trust them (transformers' save_pretrained writes "
            f"model.safetensors) and export that directory"
        )
    for path in safetensors:
        check_safetensors(path)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        _check_index(index)


def check_safetensors(path: Path) -> None:
    """One line when ``path`` is not a well-formed safetensors file: its 8-byte header length, JSON
    header, dtypes, shapes and data offsets all checked against the file's size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if length < 2 or length > min(_MAX_HEADER, size - 8):
            raise _bad(path, f"its header length ({length}) does not fit the file's {size} bytes")
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _bad(path, f"its header is not JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(header, dict):
        raise _bad(path, "its header is not a JSON object")
    data = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        _check_entry(path, name, entry, data)


def _check_entry(path: Path, name: str, entry: Any, data: int) -> None:
    if not isinstance(entry, dict) or entry.get("dtype") not in _ITEM_BYTES:
        raise _bad(path, f"tensor {name!r} has no known dtype")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(path, f"tensor {name!r} has shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise _bad(path, f"tensor {name!r} has data offsets {offsets!r}")
    begin, end = offsets
    expected = math.prod(shape) * _ITEM_BYTES[entry["dtype"]]
    if not 0 <= begin <= end <= data or end - begin != expected:
        raise _bad(path, f"tensor {name!r} ({entry['dtype']} {shape}) has bytes {begin}..{end} of {data} (truncated?)")


def _check_index(index: Path) -> None:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise LlmcError(f"{index}: not a safetensors shard index ({str(exc)[:100]}); re-save the model") from None
    if not isinstance(weight_map, dict):
        raise LlmcError(f"{index}: has no weight_map object; re-save the model")
    for shard in sorted({str(v) for v in weight_map.values()}):
        if Path(shard).name != shard or not (index.parent / shard).is_file():
            raise LlmcError(f"{index}: names shard {shard!r}, which is not a file beside it; re-save the model")


def _bad(path: Path, why: str) -> LlmcError:
    return LlmcError(f"{path}: not a valid safetensors file: {why}; re-save or re-download the weights")


def check_loading_info(info: dict[str, Any], directory: Path, token_states_only: bool, decoder: bool = False) -> None:
    """One line when transformers' ``output_loading_info`` shows parameters the checkpoint did not
    give (left at their random initialisation) or gave at another shape, naming them and the
    checkpoint's tensors the architecture did not take; or tensors of the checkpoint the model
    does not take: any, for a decoder (the whole model is loaded), a layer's, for an encoder (a
    head the export leaves out, a pooler, is fine). ``token_states_only``: the export keeps only
    the token states, so a missing pooler is harmless."""
    missing = sorted(str(k) for k in info.get("missing_keys") or [])
    if token_states_only:
        missing = [k for k in missing if not any(part in k for part in _UNUSED_BY_TOKEN_STATES)]
    mismatched = [_mismatch(m) for m in info.get("mismatched_keys") or []]
    unexpected = sorted(str(k) for k in info.get("unexpected_keys") or [])
    dropped = unexpected if decoder else [k for k in unexpected if _LAYER.search(k)]
    if dropped and not missing and not mismatched:
        raise LlmcError(
            f"{directory}: the checkpoint has weights this architecture does not take: {_names(dropped)}; check that "
            "config.json (model_type, layer and head counts) is the one the weights were saved with"
        )
    if mismatched:
        raise LlmcError(
            f"{directory}: the weights do not match config.json: {_names(mismatched)}; give the config.json the "
            "weights were saved with"
        )
    if missing:
        found = f"; the checkpoint has {_names(unexpected)} instead" if unexpected else ""
        raise LlmcError(
            f"{directory}: the weights leave parameters of this architecture uninitialised: {_names(missing)}{found}; "
            "check that config.json's model_type and architectures are the weights' (llmc exports no random parameters)"
        )


def _mismatch(entry: Any) -> str:
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        name, saved, wanted = entry
        return f"{name} (saved {list(saved)}, config wants {list(wanted)})"
    return str(entry)


def _names(names: list[str], shown: int = 3) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
