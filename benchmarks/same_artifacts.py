"""Do two llmc checkouts build the same artifacts? sha256 of model.onnx, of every other file the
manifest hashes, and of the manifest itself with what varies from run to run taken out (timings,
peak RSS, paths, the build cache record, the schema version), case by case, and each build's
wall time (one fresh process per build, the two checkouts alternating).

    git worktree add /tmp/llmc-old REV
    python -m benchmarks.same_artifacts --against /tmp/llmc-old

Each checkout builds every case in its own fresh process (build cache off) from the benchmark
models (``benchmarks.models``, exported once); a refactoring that claims "behaviour unchanged"
should print ``same`` on every row (``model.onnx``, the other files, the manifest). A case that
fails in a checkout prints its error line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import models
from benchmarks.harness import ROOT, SENTENCES, tokenizer_dir

CASES = {
    "MiniLM fp32": ("minilm", {}),
    "MiniLM legacy export fp32": ("minilm-legacy", {}),
    "BERT-base fp32": ("bert_base", {}),
    "GPT-2 fp32": ("gpt2", {}),
    "LLaMA-style fp32": ("llama", {}),
    "MiniLM int8 ort": ("minilm", {"precision": "int8", "int8": True}),
    "MiniLM fp16 trt (no engine)": ("minilm", {"target": "trt", "precision": "fp16", "no_engine": True}),
    "BERT-base int8 trt (no engine)": ("bert_base", {"target": "trt", "precision": "int8", "no_engine": True, "int8": True}),
    "LLaMA-style int4": ("llama", {"precision": "int4"}),
    "LLaMA-style int8 weight-only": ("llama", {"precision": "int8", "weight_only": True}),
    "GPT-2 fp32, gqa off": ("gpt2", {"fusions": {"gqa": False}}),
}

# Runs in the checkout under test: argv = root, case name, model path, kwargs json, out dir.
CHILD = """
import hashlib, json, os, sys, time
root, name, model, kwargs, out = sys.argv[1:6]
sys.path.insert(0, root)
os.environ["LLMC_NO_CACHE"] = "1"
import llmc
assert llmc.__file__.startswith(root), llmc.__file__
kwargs = json.loads(kwargs)
if kwargs.pop("int8", False):
    try:
        from llmc.int8.options import QuantizeOptions
    except ImportError:
        from llmc.compiler.quantize import QuantizeOptions
    kwargs.update(calibration_data=kwargs.pop("calibration_data"), tokenizer=kwargs.pop("tokenizer"),
                  quantization=QuantizeOptions(samples=64, holdout=32, threads=2), shapes={"input_ids": (1, 128)})
else:
    kwargs.pop("calibration_data"); kwargs.pop("tokenizer")
VOLATILE = ("seconds", "_ms", "rss", "timing", "schema_version", "cache", "file", "path", "create")


def stable(value):  # the manifest without what differs between two runs of the same build
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if not any(w in k for w in VOLATILE)}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def digest(value):
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


try:
    start = time.perf_counter()
    llmc.build(model, output=out, threads=2, **kwargs)
    seconds = time.perf_counter() - start
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    files = {k: v for k, v in manifest["artifact"]["sha256"].items() if k != "model.onnx"}
    print(manifest["artifact"]["sha256"]["model.onnx"], digest(files), digest(stable(manifest)), f"{seconds:.2f}")
except Exception as exc:
    print("failed: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120])
"""


def _model(key: str) -> Path:
    if key == "minilm-legacy":
        return models.minilm(dynamo=False, eager=True)
    return getattr(models, key)()


def _build(root: Path, name: str, model: Path, kwargs: dict, out: Path) -> str:
    args = {**kwargs, "calibration_data": str(SENTENCES), "tokenizer": str(tokenizer_dir())}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), name, str(model), json.dumps(args), str(out)],
        capture_output=True, text=True, cwd=tempfile.gettempdir(),
    )
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else "failed: " + (done.stderr.strip().splitlines() or ["no output"])[-1][:120]


def _split(line: str) -> tuple[list[str], str]:
    """([model sha256, other files' digest, stable manifest digest] or [the failure], build seconds or '-')."""
    if line.startswith("failed"):
        return [line], "-"
    *digests, seconds = line.split(" ")
    return digests, seconds


def _verdict(ours: list[str], theirs: list[str]) -> str:
    if ours[0].startswith("failed") or theirs[0].startswith("failed"):
        return "same failure" if ours == theirs else "DIFFERENT"
    parts = [what for what, a, b in zip(("model.onnx", "files", "manifest"), ours, theirs, strict=True) if a != b]
    return "same" if not parts else "DIFFERENT: " + ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, help="a checkout of the other revision")
    args = parser.parse_args()
    rows = ["| case | model.onnx here | model.onnx there | model, files, manifest | build s (here / there) |",
            "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="llmc-same-") as tmp:
        for name, (key, kwargs) in CASES.items():
            model = _model(key)
            slug = name.replace(" ", "_").replace("(", "").replace(")", "")
            ours = _build(ROOT, name, model, kwargs, Path(tmp) / "ours" / slug)
            theirs = _build(args.against.resolve(), name, model, kwargs, Path(tmp) / "theirs" / slug)
            (ours, our_s), (theirs, their_s) = _split(ours), _split(theirs)
            rows.append(f"| {name} | {ours[0][:16]} | {theirs[0][:16]} | {_verdict(ours, theirs)} | {our_s} / {their_s} |")
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
