"""Export Hugging Face / torch models to ONNX (``pip install 'llmc[export]'``).

- :mod:`llmc.export.models`: tiny/random-weight model builders and the exporters
  :func:`export_encoder` / :func:`export_decoder` (their I/O convention is documented there);
- :mod:`llmc.export.hf`: ``llmc export SOURCE -o DIR``: a Hugging Face model directory to an
  ONNX model with its tokenizer and generation config beside it (:func:`export_pretrained`);
- :mod:`llmc.export.tasks`: encoder tasks (:mod:`llmc.spec.task`): detection, the head's
  class, the graph of each task's outputs and the spec ``model.onnx`` carries;
- :mod:`llmc.export.sentence`: sentence-transformers' Pooling, Dense and Normalize modules in the graph;
- :mod:`llmc.export.phases`: the export's phases, timed and reported through an optional ``log``.
"""

from __future__ import annotations

from llmc.export.hf import ExportResult, detect_task, export_pretrained
from llmc.export.models import (
    ENCODER_INPUTS,
    LLAMA_DEFAULTS,
    _DecoderWithCache,
    _HiddenStates,
    _randomize_norms_and_biases,
    _torch,
    bert_model,
    decoder_cache_shape,
    decoder_input_names,
    decoder_output_names,
    export_decoder,
    export_encoder,
    gpt2_model,
    llama_model,
    minilm_model,
)

__all__ = [
    "ENCODER_INPUTS", "LLAMA_DEFAULTS", "ExportResult", "_DecoderWithCache", "_HiddenStates",
    "_randomize_norms_and_biases", "_torch", "bert_model", "decoder_cache_shape", "decoder_input_names",
    "decoder_output_names", "detect_task", "export_decoder", "export_encoder", "export_pretrained",
    "gpt2_model", "llama_model", "minilm_model",
]
