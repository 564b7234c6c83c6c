"""What an INT4 build is asked to do (light: imported by the CLI and the build cache key)."""

from __future__ import annotations

import dataclasses
import math

from llmc.errors import LlmcError

METHODS = ("minmax", "rtn", "hqq")
BODIES = ("int4", "int8")
HEADS = ("int8", "int4", "float")
EMBEDDINGS = ("int8", "float")
BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
AUTO = "auto"  # block size / accuracy level chosen per node by measurement (llmc.weight_only.choose)
LLMC_KERNEL, ORT_KERNEL = "llmc", "ort"  # who computes the 4-bit float32 MatMuls (llmc.weight_only.kernel)
KERNELS = (AUTO, LLMC_KERNEL, ORT_KERNEL)


@dataclasses.dataclass(frozen=True)
class Int4Options:
    """Block-wise 4-bit weights for MatMul, and what the int4 graph must keep of fp32: perplexity
    within ``max_perplexity_increase`` and top-1 agreement ``min_top1_agreement`` (decoders, on
    ``eval_text`` or on the fp32 graph's own samples; other models: the worst output cosine).

    ``method``: ``minmax`` (block minimum and range with a float minimum: llama.cpp's Q4_1,
    exact on Q4_1 GGUF weights), ``rtn`` (ONNX Runtime's round-to-nearest, integer zero points or
    ``symmetric``), ``hqq`` (ONNX Runtime's half-quadratic quantizer, error-minimising).
    ``accuracy_level`` is MatMulNBits' compute type for the activations (0: unset, float32;
    4: int8 activations, fast but the least accurate). ``head``: the LM head: ``int8`` by default,
    one 8-bit MatMulNBits at level 4 (``head_accuracy_level`` 0 runs it as two exact 4-bit digits with
    float32 activations), ``int4`` or ``float``; ``head_rescore`` K (default 8) recomputes a
    quantized head's K largest logits from its float rows, so the greedy token is the float head's
    whenever it is among them (SmolLM2: top-1 100%, perplexity -0.04% against the float head's 0%,
    the head read per token 113 -> 28 MB; without rescoring the 8-bit head's int8 activations keep
    97.2% top-1). ``embedding``: a token-embedding Gather onto 8-bit blocks (the same table as a tied
    8-bit head; a table tied to a float head stays float). The body defaults to float32
    activations: measured on SmolLM2, int8 activations anywhere moved its greedy chat answer;
    ``--accuracy-level 4`` was the fast setting on MatMulNBits; on llmc's kernel (``kernel``) the
    float32 default is faster (benchmarks/RESULTS.md, decode).

    ``kernel``: who computes the 4-bit MatMuls with float32 activations on the CPU: ``llmc``
    (``ai.llmc::MatMulInt4``, :mod:`llmc.weight_only.kernel`: each weight dequantized once per 8
    rows, a row's output the same alone or batched), ``ort`` (MatMulNBits), ``auto`` (llmc's where
    its library is built and the CPU has AVX-512 or AVX2 with FMA, else ONNX Runtime's).

    ``block_size`` / ``accuracy_level`` ``"auto"``: chosen per node (per packed group) by
    measurement, :mod:`llmc.weight_only.choose`: the fastest setting, timed on the node's own shape,
    whose output error on the model's activations stays within 10% of the most accurate one's.
    """

    method: str = "minmax"
    body: str = "int4"  # every MatMul but the head: int4, or int8 (--precision int8 --weight-only)
    block_size: int | str = 32
    symmetric: bool = False
    accuracy_level: int | str = 0
    min_top1_agreement: float = 0.9
    max_perplexity_increase: float = 0.05
    eval_text: str | None = None  # held-out text for the gate (else the fp32 graph's own samples)
    head: str = "int8"
    head_accuracy_level: int | None = None  # the head's MatMulNBits compute (None: 4 for int8, else the body's)
    head_rescore: int = 8  # a quantized head's top-k logits recomputed from the float rows (0: off)
    embedding: str = "int8"
    pack: bool = True  # MatMuls of one activation (q/k/v, gate/up) run as one MatMulNBits
    gate_samples: int = 3  # seeded token sequences beyond the verification feeds
    kernel: str = "auto"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LlmcError(f"--int4-method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.block_size not in (*BLOCK_SIZES, AUTO) or isinstance(self.block_size, bool):
            raise LlmcError(
                f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))} (MatMulNBits' block sizes) or auto, "
                f"not {self.block_size!r}"
            )
        if self.accuracy_level not in (*ACCURACY_LEVELS, AUTO) or isinstance(self.accuracy_level, bool):
            raise LlmcError(
                "--accuracy-level must be 0..4 (0: float32 compute, 4: int8 activations) or auto, "
                f"not {self.accuracy_level!r}"
            )
        if self.body != "int4" and AUTO in (self.block_size, self.accuracy_level):
            raise LlmcError(
                "--block-size/--accuracy-level auto choose int4 settings; drop them with --precision int8 --weight-only"
            )
        value = self.min_top1_agreement
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise LlmcError(f"--min-top1-agreement is a fraction of tokens (e.g. 0.9), not {value!r}")
        value = self.max_perplexity_increase
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise LlmcError(f"--max-perplexity-increase is a fraction (0.05: 5%), not {value!r}")
        if self.method != "rtn" and self.symmetric:
            raise LlmcError(
                f"--int4-method {self.method} is asymmetric only (a float minimum per block); "
                "drop --symmetric or use --int4-method rtn"
            )
        if self.body not in BODIES:
            raise LlmcError(f"body must be one of {', '.join(BODIES)}, not {self.body!r}")
        if self.head not in HEADS:
            raise LlmcError(f"--lm-head must be one of {', '.join(HEADS)}, not {self.head!r}")
        if self.head_accuracy_level not in (None, 0, 4) or isinstance(self.head_accuracy_level, bool):
            raise LlmcError(
                "--lm-head-accuracy-level must be 0 (float32 activations) or 4 (int8), "
                f"not {self.head_accuracy_level!r}"
            )
        if isinstance(self.head_rescore, bool) or not isinstance(self.head_rescore, int) or not 0 <= self.head_rescore <= 64:
            raise LlmcError(f"--lm-head-rescore is a count of top tokens, 0 (off) to 64, not {self.head_rescore!r}")
        if self.embedding not in EMBEDDINGS:
            raise LlmcError(f"--embedding must be one of {', '.join(EMBEDDINGS)}, not {self.embedding!r}")
        if self.kernel not in KERNELS:
            raise LlmcError(f"--int4-kernel must be one of {', '.join(KERNELS)}, not {self.kernel!r}")
        if not isinstance(self.gate_samples, int) or self.gate_samples < 0:
            raise LlmcError(f"gate_samples must be an integer >= 0, not {self.gate_samples!r}")

    @property
    def block(self) -> int:
        """The build's block size; with ``auto``, the smallest candidate (32): the LM head's, the
        embedding's and the fallback ranking's."""
        return 32 if self.block_size == AUTO else int(self.block_size)

    @property
    def level(self) -> int:
        """The build's accuracy level; with ``auto``, 0 until a node's choice says otherwise."""
        return 0 if self.accuracy_level == AUTO else int(self.accuracy_level)

    @property
    def head_level(self) -> int:
        """The LM head's accuracy level: ``head_accuracy_level``; unset, 4 for an int8 head (one
        8-bit node; its top logits are rescored) and the build's level for an int4 one."""
        if self.head_accuracy_level is not None:
            return self.head_accuracy_level
        return 4 if self.head == "int8" else self.level

    @property
    def auto(self) -> bool:
        return AUTO in (self.block_size, self.accuracy_level)
