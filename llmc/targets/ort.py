"""The ``ort`` target: ONNX Runtime (CPU, CUDA or its TensorRT execution provider).

Fusions produce ONNX Runtime's contrib ops; the defaults that are off were measured slower or no
faster on the CPU (benchmarks/RESULTS.md, fusion A/B). int8 is written for ONNX Runtime's integer
kernels (u8 x s8: ~14x faster than s8 x s8 on x86 without VNNI). float16 runs on GPU devices.
Decoders get ``logits_to_keep`` (``logits``: llmc.passes.logits), which llmc's generation feeds.
"""

from __future__ import annotations

from llmc.spec.target import FamilyUse, QdqRules, Target

PIPELINE = "(prune,shape,fold,noop,cse)*4,fuse,(prune,fold,cse)*2,logits,memory"
GPU_DEVICES = ("cuda", "tensorrt")

SLOWER = "measured slower than the unfused ops on this target (benchmarks/RESULTS.md, fusion A/B)"
NO_FASTER = (
    "measured no faster than the unfused ops on this target (whole-model A/B within 1% either "
    "way at batch 1 and 8; benchmarks/RESULTS.md, fusion A/B)"
)
GQA_GPU = (
    "its padding-aware form (an attention_bias from attention_mask) is verified on ONNX Runtime's "
    "CPU kernel only; enable it with --enable-fusion gqa and check the build's verification"
)


class OrtTarget(Target):
    def runs_float16(self, device: str) -> bool:
        return device in GPU_DEVICES


ORT = OrtTarget(
    name="ort",
    description="ONNX Runtime",
    pipeline=PIPELINE,
    fusions=(
        FamilyUse("canonical"),
        FamilyUse("layer_norm"),  # ONNX Runtime runs LayerNormalization at any opset
        FamilyUse("embed_layer_norm", {"cpu": NO_FASTER}),
        FamilyUse("rms_norm"),
        FamilyUse("gelu"),
        FamilyUse("skip_layer_norm", {"cpu": SLOWER}),
        FamilyUse("skip_rms_norm"),
        FamilyUse("rotary"),
        FamilyUse("gqa", {device: GQA_GPU for device in GPU_DEVICES}),
        FamilyUse("attention"),
        FamilyUse("packed_qkv"),
        FamilyUse("bias_gelu"),
    ),
    qdq=QdqRules(integer_ops=True, activations="uint8 asymmetric"),
    contrib_ops=True,
    measures_padding=True,
)
