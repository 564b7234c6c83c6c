"""Do two llmc checkouts build the same artifacts? sha256 of model.onnx, case by case, and
each build's wall time (one fresh process per build, the two checkouts alternating).

    git worktree add /tmp/llmc-old REV
    python -m benchmarks.same_artifacts --against /tmp/llmc-old

Each checkout builds every case in its own fresh process (build cache off) from the benchmark
models (``benchmarks.models``, exported once); a refactoring that claims "behaviour unchanged"
should print ``same`` on every row. A case that fails in a checkout prints its error line.
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
try:
    start = time.perf_counter()
    llmc.build(model, output=out, threads=2, **kwargs)
    seconds = time.perf_counter() - start
    print(hashlib.sha256(open(os.path.join(out, "model.onnx"), "rb").read()).hexdigest(), f"{seconds:.2f}")
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


def _split(line: str) -> tuple[str, str]:
    """(sha256 or the failure, build seconds or '-')."""
    if line.startswith("failed"):
        return line, "-"
    sha, _, seconds = line.partition(" ")
    return sha, seconds or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, help="a checkout of the other revision")
    args = parser.parse_args()
    rows = ["| case | this checkout | other checkout | | build s (this / other) |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="llmc-same-") as tmp:
        for name, (key, kwargs) in CASES.items():
            model = _model(key)
            slug = name.replace(" ", "_").replace("(", "").replace(")", "")
            ours = _build(ROOT, name, model, kwargs, Path(tmp) / "ours" / slug)
            theirs = _build(args.against.resolve(), name, model, kwargs, Path(tmp) / "theirs" / slug)
            (ours, our_s), (theirs, their_s) = _split(ours), _split(theirs)
            verdict = "same" if ours == theirs and not ours.startswith("failed") else (
                "same failure" if ours == theirs else "DIFFERENT")
            rows.append(f"| {name} | {ours[:16]} | {theirs[:16]} | {verdict} | {our_s} / {their_s} |")
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
