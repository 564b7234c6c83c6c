"""The artifact's ``manifest.json`` (:class:`llmc.runtime.manifest.Manifest`), assembled in one place
from what the build stages return."""

from __future__ import annotations

import platform
import sys
from typing import TYPE_CHECKING, Any

from llmc.model import sparsity
from llmc.model.files import MODEL_FILE
from llmc.model.values import count_nodes
from llmc.runtime.manifest import ArtifactFiles, Gqa, Manifest, Nodes, Session, Shapes, Source
from llmc.spec.task import read_spec
from llmc.version import __version__

if TYPE_CHECKING:
    from llmc.compiler.stages import Compiled, Precise, Prepared, Verified
    from llmc.model.compare import Comparison


def versions() -> dict[str, str]:
    """The versions a build depends on, as recorded in every manifest (and in benchmark results)."""
    import numpy as np
    import onnx
    import onnx_ir as ir
    import onnxruntime
    import onnxscript

    return {
        "llmc": __version__,
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnx_ir": ir.__version__,
        "onnxscript": onnxscript.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "platform": f"{sys.platform}-{platform.machine()}",
    }


def assemble(prep: Prepared, compiled: Compiled, precise: Precise, memory: dict[str, Any], verified: Verified) -> Manifest:
    """``manifest.json`` of a build, from what its stages returned (the engine, the tokenizer and
    the hashes of every file are ``verify.write``'s; the cache section is the build cache's)."""
    request, comparison, feeds = prep.request, verified.comparison, prep.feeds
    fused_before, fused_after = compiled.fused_before, compiled.fused_after
    sparse = None
    if compiled.sparsity_before is not None and compiled.sparsity_before.sparse:
        # 2:4 weights in the source (llmc compress --sparsity 2:4): does the artifact keep them?
        sparse = {"source": compiled.sparsity_before.to_dict(), "artifact": sparsity.report(precise.model).to_dict()}
    return Manifest(
        llmc_version=__version__,
        source=Source(prep.source["path"], prep.source["sha256"]),
        target=request.target.name,
        precision=request.precision.name,
        pipeline=str(prep.pipeline),
        passes=[r.to_dict() for r in compiled.manager.records],
        rewrites=compiled.manager.timing.rewrites(),
        # Fused ops the build created: nodes of fused op types gained, by op type.
        fusions={op: n - fused_before.get(op, 0) for op, n in sorted(fused_after.items()) if n > fused_before.get(op, 0)},
        fused_ops=fused_after,
        not_fused=[r.to_dict() for r in compiled.not_fused],
        fusion_families={"enabled": [use.name for use in prep.enabled_fusions], "disabled": prep.disabled_fusions},
        nodes=Nodes(compiled.nodes_before, count_nodes(precise.model)),
        compile_seconds=round(compiled.seconds, 4),
        # The ONNX checker after every pass and precision step (llmc.passes.validity).
        validity=compiled.manager.validity.to_dict() if compiled.manager.validity else None,
        memory=memory,
        shapes=Shapes({k: list(v.shape) for k, v in feeds.items()}, prep.assumed),
        verification=_verification(prep, comparison, precise, verified.logits_to_keep),
        artifact=ArtifactFiles(
            files=[f.name for f in verified.files], model_sha256=verified.model_sha256,
            external_data=len(verified.files) > 1,
        ),
        versions=versions(),
        session=Session(
            verified.session_config.providers(), verified.session_config.to_dict(), round(verified.session_seconds, 4)
        ),
        padding=verified.padding,
        gqa=_gqa(precise.model),
        reports=dict(precise.reports),  # each precision step's section ("quantization", "fp16")
        sparsity=sparse,
        task=_task(precise.model),
        compression=_compression(precise.model),
    )


def _task(model: Any) -> dict[str, Any] | None:
    """The artifact model's task (its ``llmc.task`` metadata, :mod:`llmc.spec.task`), for the
    manifest's ``task`` section; None when the model was exported without one."""
    spec = read_spec(dict(model.metadata_props), MODEL_FILE)
    return None if spec is None else spec.to_dict()


def _compression(model: Any) -> dict[str, Any] | None:
    """``llmc compress``'s record of the model (:mod:`llmc.spec.compression`), for the manifest's
    ``compression`` section; None for a model it did not make."""
    from llmc.spec.compression import read

    return read(dict(model.metadata_props))


def _gqa(model: Any) -> Gqa | None:
    """GroupQueryAttention nodes, and how many take the padding from ``attention_mask`` (an
    ``attention_bias`` input: ``llmc.passes.fusion.gqa``); the generation runtime reads it."""
    nodes = [n for n in model.graph if n.op_type == "GroupQueryAttention" and n.domain == "com.microsoft"]
    if not nodes:
        return None
    masked = sum(1 for n in nodes if len(n.inputs) > 10 and n.inputs[10] is not None)
    rotating = sum(1 for n in nodes if n.attributes.get_int("do_rotary", 0))
    return Gqa(len(nodes), masked, rotating)


def _verification(
    prep: Prepared, comparison: Comparison, precise: Precise, logits_to_keep: dict[str, Any] | None = None
) -> dict[str, Any]:
    reference = "onnxruntime ORT_DISABLE_ALL on the source model" + prep.request.precision.reference_note
    feeds = prep.feeds
    return {
        **comparison.summary(),
        "passed": True,
        "tolerance": prep.tolerance,
        # measured only when a comparison missed the tolerance: llmc.compiler.rounding
        "rounding": prep.rounding,
        "reference": reference,
        "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in feeds.items()},
        "seed": prep.request.seed if prep.request.inputs is None else None,
        # A decoder's KV cache: computed by the source model from a seeded prefill of this many tokens.
        "kv_cache_prefill_tokens": prep.cache_prefill_tokens,
        "outputs": {
            o.name: {"max_abs_error": o.max_abs_error, "max_rel_error": o.max_rel_error, "cosine": o.cosine}
            for o in comparison.outputs
        },
        # the LM head run on the last position alone against the full run's (llmc.passes.logits)
        "logits_to_keep": logits_to_keep,
    }
