"""``llmc.build``: the build as a short sequence of named stages.

    prepare -> [build cache] -> passes -> precision -> memory -> verify -> write -> [build cache]

Each stage is a function with a typed input and output (``stages``, ``precision``, ``verify``);
the manifest is assembled in one place (``manifest.assemble``). A build whose key (source bytes,
options, calibration data, versions: ``cache``) was built before is copied from the cache
instead, after its files pass their sha256 check.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmc.compiler.cache import BuildCache, cache_disabled, digest_key, external_data
from llmc.compiler.request import BuildRequest, make_request, output_dir
from llmc.errors import LlmcError
from llmc.kernels import state as kernels_state
from llmc.model.files import CALIBRATION_FILE, MANIFEST_FILE, companion_files, sha256_file
from llmc.model.output_dir import OutputWriter, check_output
from llmc.runtime.artifact import Artifact
from llmc.runtime.manifest import Cache, Manifest, Source, write_manifest
from llmc.version import __version__

if TYPE_CHECKING:  # the stages import onnx and ONNX Runtime: only on a cache miss
    from llmc.compiler.stages import ModelLike, Progress

# The versions that decide a build's bytes, in its cache key: name -> distributions providing it.
KEY_VERSIONS = {
    "onnx": ("onnx",), "onnx_ir": ("onnx-ir", "onnx_ir"), "onnxscript": ("onnxscript",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "numpy": ("numpy",),
}


def build(
    model: ModelLike,
    target: str = "ort",
    precision: str = "fp32",
    output: str | Path | None = None,
    *,
    log: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> Artifact:
    """Compile ``model`` for ``target`` into the directory ``output``; return the Artifact.

    ``options`` are the build options of ``llmc build`` by their Python names (the option table,
    :func:`llmc.compiler.request.table`: ``shapes``, ``inputs``, ``passes``, ``disable_passes``,
    ``device``, ``threads``, ``tolerance``, ``seed``, ``fusions``, ``calibration_data``,
    ``calibration_samples``, ``block_size``, ``keep_fp32``, ``profiles``...), or a section's
    settings object by its name: ``quantization`` (:class:`llmc.int8.options.QuantizeOptions`),
    ``int4`` (:class:`llmc.weight_only.options.Int4Options`), ``fp16``
    (:class:`llmc.fp16.options.Fp16Options`), ``engine``
    (:class:`llmc.targets.trt.config.EngineSettings`).

    ``fusions`` turns fusion families on/off against the target's measured defaults
    (``{"skip_layer_norm": True}``); see ``llmc passes`` for their names.
    ``precision="int8"`` calibrates on ``calibration_data`` (a directory of .npz feeds, one
    stacked .npz, or a text file with ``tokenizer``); the artifact is then checked against the
    fp32 graph on held-out samples (cosine budget) instead of the exact tolerance.
    ``precision="fp16"`` (``trt``, or ``ort`` on a GPU device) converts to float16 with float32
    islands and checks it on a CPU emulation of float16 against ``tolerance`` (default 1e-2);
    ``trt`` int8 runs what is not int8 in float16. ``precision="int4"`` (target ``ort``) stores
    MatMul weights as 4-bit blocks (``MatMulNBits``), and ``precision="int8", weight_only=True``
    as 8-bit blocks; both are gated on perplexity and top-1 agreement with the fp32 graph,
    falling back node by node (``llmc.weight_only.stage``). ``target="trt"`` builds a TensorRT
    engine into ``model.plan``, signed in the manifest; ``no_engine=True`` writes only the
    TensorRT-ready ONNX. ``alignment`` is the arena alignment of the memory plan recorded in the
    manifest's ``memory`` (planned for the shapes of the verification inputs). ``cache=False``
    (or ``LLMC_NO_CACHE=1``) neither reads nor fills the build cache. A precision registered with
    ``llmc.register_precision`` is built the same way.
    """
    request = make_request(target=target, precision=precision, **options)
    return run_build(model, request, output, log or (lambda _msg: None), progress)


def run_build(
    model: ModelLike, request: BuildRequest, output: str | Path | None, log: Callable[[str], None],
    progress: Progress | None = None,
) -> Artifact:
    """The stages in order, with the build cache around them, written through an OutputWriter
    (a private directory moved into place once verified; ``llmc.model.output_dir``).

    The stages (and onnx, onnxscript, ONNX Runtime with them) are imported only on a cache
    miss: a hit needs the options, the source's hash and a file copy, nothing more.
    """
    request.check()
    source = describe_source(model)
    if source is not None and source.get("path"):  # a companion linked from outside: one line before any work
        companion_files(Path(source["path"]).parent)
    destination = _destination(model, source, output, request)
    store = _cache_for(request)
    key = _cache_key(source, request) if store is not None and source is not None else None
    with OutputWriter(destination) as writer:
        if key is not None:
            hit = _from_cache(store, key, source, writer, log)
            if hit is not None:
                writer.commit()
                return hit
        artifact = _compile(model, request, output, source, writer.path, store, key, log, progress)
        writer.commit()
    return artifact


def _compile(
    model: ModelLike, request: BuildRequest, output: str | Path | None, source: dict[str, Any] | None,
    work_dir: Path, store: BuildCache | None, key: str | None, log: Callable[[str], None],
    progress: Progress | None,
) -> Artifact:
    from llmc.compiler.precision import apply_precision, plan_memory
    from llmc.compiler.stages import prepare, run_passes
    from llmc.compiler.verify import verify, write

    prep = prepare(model, request, output, source)
    prep.work_dir = work_dir
    # The external data the source reads, before the passes replace its tensors.
    external = external_data(Path(prep.source["path"]), prep.model) if key and prep.source["path"] else {}
    compiled = run_passes(prep, log)
    precise = apply_precision(prep, compiled, log, progress, store)
    memory, session_config = plan_memory(prep, compiled, precise, log)
    verified = verify(prep, compiled, precise, session_config, log)
    artifact = write(prep, compiled, precise, memory, verified, log)
    if key is not None:
        _into_cache(store, key, artifact, work_dir, external, log)
    return artifact


def _destination(
    model: ModelLike, source: dict[str, Any] | None, output: str | Path | None, request: BuildRequest
) -> Path:
    """The output directory, checked before any compiling (``check_output``)."""
    if source is None and output is None and isinstance(model, (str, Path)):
        from llmc.model.io import load_model

        load_model(model)  # an unreadable path: its one line (no such file, a directory...)
    path = output_dir(source, output, request.target)
    check_output(path)
    if request.dump_dir is not None and _inside(Path(request.dump_dir), path):
        raise LlmcError(f"--dump-ir-after DIR {request.dump_dir} is inside -o {path}; dump somewhere else")
    return path


def _inside(path: Path, directory: Path) -> bool:
    path, directory = path.absolute(), directory.absolute()
    return path == directory or directory in path.parents


def describe_source(model: ModelLike) -> dict[str, Any] | None:
    """The manifest's ``source`` {path, sha256}, from the file's bytes or the in-memory model's
    content; None when the path is not a readable file (``prepare`` then says why)."""
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            return None
        return {"path": str(path.resolve()), "sha256": sha256_file(path)}
    import onnx
    import onnx_ir as ir

    if isinstance(model, ir.Model):
        from llmc.model.io import ir_sha256

        return {"path": None, "sha256": ir_sha256(model)}
    if isinstance(model, onnx.ModelProto):
        return {"path": None, "sha256": hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()}
    return None


def _cache_for(request: BuildRequest) -> BuildCache | None:
    # Diagnostics observe the passes and an engine is signed for this machine: both always build
    # (TensorRT engines have their own cache, keyed by GPU and TensorRT version).
    if not request.cache or cache_disabled() or request.diagnostics or not request.target.cacheable(request):
        return None
    return BuildCache().prepare()  # its settings, directory and key: one line now, before any compile


def _cache_key(source: dict[str, Any], request: BuildRequest) -> str:
    return digest_key({
        "source": source["sha256"],
        "options": request.key_material(),
        "companions": _companion_digests(source),
        "versions": {name: _installed(*dists) for name, dists in KEY_VERSIONS.items()},
        "llmc": [__version__, llmc_sources()],
        "kernels": kernels_state(),  # whether (and which) llmc kernels this install runs
    })


def _companion_digests(source: dict[str, Any]) -> dict[str, str]:
    """sha256 of the tokenizer / generation config files beside the source model (the build
    carries them into the artifact, so their bytes are part of what the key stands for)."""
    if not source.get("path"):
        return {}
    directory = Path(source["path"]).parent
    return {name: sha256_file(directory / name) for name in companion_files(directory)}


def llmc_sources() -> str:
    """A hash of llmc's own code, so an edited checkout (same version number) never reuses
    artifacts an earlier llmc built."""
    global _SOURCES
    if _SOURCES is None:
        root = Path(__file__).resolve().parents[1]
        digest = hashlib.sha256()
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        _SOURCES = digest.hexdigest()
    return _SOURCES


_SOURCES: str | None = None


def _installed(*distributions: str) -> str:
    """A distribution's version, read without importing it."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "missing"


def _from_cache(
    store: BuildCache, key: str, source: dict[str, Any], writer: OutputWriter, log: Callable[[str], None]
) -> Artifact | None:
    start = time.perf_counter()
    entry = store.lookup(key, Path(source["path"]) if source["path"] else None)
    if entry is None:
        return None
    log("copying the artifact from the build cache")
    stored = store.restore(entry, writer.path)  # each copy checked against the stored sha256
    if stored is None:
        return None
    try:
        manifest = Manifest.from_dict(stored, writer.path / MANIFEST_FILE)
    except LlmcError:  # an entry of an older layout or manifest schema: built again
        store.drop(entry)
        return None
    manifest.source = Source(source["path"], source["sha256"])  # the same bytes, perhaps at another path
    statistics = (manifest.report("quantization") or {}).get("statistics")
    if statistics and statistics.get("file"):
        statistics["file"] = str(writer.destination / CALIBRATION_FILE)
    manifest.cache = Cache(hit=True, key=key, seconds=round(time.perf_counter() - start, 4))
    write_manifest(writer.path, manifest)
    return Artifact(writer.destination, manifest)


def _into_cache(
    store: BuildCache, key: str, artifact: Artifact, work_dir: Path, external: dict[str, str],
    log: Callable[[str], None],
) -> None:
    manifest = artifact.manifest
    manifest.cache = Cache(hit=False, key=key)
    write_manifest(work_dir, manifest)
    files = [*manifest.artifact.sha256, MANIFEST_FILE]
    summary = {
        "source": manifest.source.path, "target": manifest.target, "precision": manifest.precision,
        "pipeline": manifest.pipeline, "external": external,
    }
    if store.store(key, work_dir, files, summary):
        log("stored in the build cache")
