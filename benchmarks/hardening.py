"""Issue 33's adversarial cases against llmc's newer surfaces, each probed and classified.

    python -m benchmarks.hardening [--only KIND] [--render]

Builds its fixtures in a temp dir (a tiny random llama with a BOS-adding WordLevel tokenizer and a
chat template, exported and built; tiny ONNX graphs for the build cache; no downloads), then runs
one probe per case through the real CLI (``python -m llmc``), or a real ``llmc serve`` (uvicorn,
one process, HTTP via requests), each under a timeout. Outcomes (``benchmarks.hardening_kit``):
handled, traceback, wrong success, security, hang. Prints a table per kind and the totals, writes
``.cache/hardening/results.json``; ``--render`` writes the "Hardening" subsection of RESULTS.md's
integrity section, beside issue 33's "before" counts.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import struct
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from benchmarks import hardening_kit as kit
from benchmarks.harness import RESULTS, machine_line, write_section

BEGIN, END, INTEGRITY_END = "<!-- hardening:begin -->", "<!-- hardening:end -->", "<!-- integrity:end -->"
OUT = Path(".cache/hardening/results.json")
BEFORE = {kit.HANDLED: 14, kit.TRACEBACK: 12, kit.WRONG: 11, kit.SECURITY: 6, kit.HANG: 0}
KINDS = ("model directories", "server", "build cache", "triton", "chat templates", "smaller")
NOT_PROBED = [("server", "Ray's internal ports bind to loopback",
               "needs a Ray cluster started on this 2-core machine (ray start, ~1 GB, tens of seconds); not cheap")]
PROBES: list[tuple[str, str, str, Callable[..., tuple[str, str]]]] = []


def probe(kind: str, case: str, expected: str) -> Callable:
    def register(fn: Callable[..., tuple[str, str]]) -> Callable[..., tuple[str, str]]:
        PROBES.append((kind, case, expected, fn))
        return fn

    return register


class Fixtures:
    """The temp dir and what every probe shares: the llama's HF dir, its export and artifact."""

    def __init__(self, root: Path) -> None:
        self.root, self.hf, self.export, self.artifact = root, root / "hf" / "llama", root / "export", root / "artifact"
        shutil.rmtree(root / "cases", ignore_errors=True)
        if not kit.reusable(self.artifact):  # --workdir: fixtures of an earlier run are reused
            kit.llama_dir(self.hf)
            run = kit.llmc("export", self.hf, "-o", self.export, timeout=600)
            if run.rc != 0:
                raise RuntimeError(f"the fixture export failed: {run.text[-1500:]}")
            run = kit.llmc("build", self.export / "model.onnx", "-o", self.artifact, "--no-cache", "--threads", "1",
                           timeout=600)
            if run.rc != 0:
                raise RuntimeError(f"the fixture build failed: {run.text[-1500:]}")
        self.text = root / "text.txt"
        self.text.write_text("\n".join(kit.words(12, 4 + i) for i in range(120)) + "\n")
        self._count = 0

    def fresh(self, name: str) -> Path:
        self._count += 1
        path = self.root / "cases" / f"{self._count:02d}-{name}"
        path.mkdir(parents=True)
        return path

    def hf_copy(self, name: str) -> tuple[Path, Path]:
        """A copy of the llama's HF dir to tamper with, and a case dir beside it for outputs."""
        case = self.fresh(name)
        return Path(shutil.copytree(self.hf, case / "model")), case


# -- model directories -----------------------------------------------------------------------------


def _export_leaks(fx: Fixtures, name: str, link: str, target_text: str) -> tuple[str, str]:
    """Export a model dir whose ``link`` is a symlink to a file outside it holding SECRET."""
    model, case = fx.hf_copy(name)
    outside = case / "outside" / link
    outside.parent.mkdir()
    outside.write_text(target_text)
    (model / link).unlink(missing_ok=True)
    (model / link).symlink_to(outside)
    out = case / "out"
    run = kit.llmc("export", model, "-o", out, timeout=300)
    leaked = [p.name for p in out.rglob("*") if (p.is_file() and kit.SECRET in p.read_text(errors="replace"))
                                                or (p.is_symlink() and not p.resolve().is_relative_to(out.resolve()))]
    if leaked:
        return kit.SECURITY, f"exit {run.rc}; the outside file's contents are in the export: {', '.join(leaked)}"
    outcome, detail = kit.classify_cli(run, refuse=False)
    return outcome, detail + ("" if run.rc else "; nothing from outside the dir in the export")


@probe("model directories", "tokenizer.json a symlink to a file outside the dir", "refused, or not copied")
def tokenizer_link(fx: Fixtures) -> tuple[str, str]:
    data = json.loads((fx.hf / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab[kit.SECRET] = vocab.pop(f"w{kit.VOCAB - 1}")
    return _export_leaks(fx, "tokenizer-link", "tokenizer.json", json.dumps(data))


@probe("model directories", "vocab.txt a symlink to a file outside the dir", "refused, or not copied")
def vocab_link(fx: Fixtures) -> tuple[str, str]:
    return _export_leaks(fx, "vocab-link", "vocab.txt", f"{kit.SECRET}\nroot:x:0:0\n")


@probe("model directories", "chat_template.jinja a symlink to a file outside the dir", "refused, or not copied")
def template_link(fx: Fixtures) -> tuple[str, str]:
    return _export_leaks(fx, "template-link", "chat_template.jinja", f"{{# {kit.SECRET} #}}" + kit.TEMPLATE)


def _export_refused(fx: Fixtures, name: str, tamper: Callable[[Path], None]) -> tuple[str, str]:
    model, case = fx.hf_copy(name)
    tamper(model)
    return kit.classify_cli(kit.llmc("export", model, "-o", case / "out", timeout=300), refuse=True)


def _edit_config(model: Path, **changes: Any) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, **changes}))


@probe("model directories", "one safetensors tensor renamed (a parameter left uninitialised)", "refused, naming it")
def renamed_tensor(fx: Fixtures) -> tuple[str, str]:
    def tamper(model: Path) -> None:
        from safetensors.numpy import load_file, save_file

        tensors = load_file(model / "model.safetensors")
        name = next(n for n in tensors if n.endswith("q_proj.weight"))
        tensors[name.replace("q_proj", "query_proj")] = tensors.pop(name)
        save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})

    return _export_refused(fx, "renamed", tamper)


@probe("model directories", "config model_type naming another architecture (gpt2 over llama weights)", "refused")
def other_model_type(fx: Fixtures) -> tuple[str, str]:
    return _export_refused(fx, "model-type", lambda m: _edit_config(m, model_type="gpt2", architectures=["GPT2LMHeadModel"]))


@probe("model directories", "corrupt safetensors header (length 2**40)", "one line, exit 1")
def corrupt_header(fx: Fixtures) -> tuple[str, str]:
    def tamper(model: Path) -> None:
        data = bytearray((model / "model.safetensors").read_bytes())
        data[:8] = struct.pack("<Q", 1 << 40)
        (model / "model.safetensors").write_bytes(bytes(data))

    return _export_refused(fx, "corrupt-header", tamper)


@probe("model directories", "config shapes that do not match the weights (intermediate_size 128 vs 64)", "one line, exit 1")
def shape_mismatch(fx: Fixtures) -> tuple[str, str]:
    return _export_refused(fx, "shapes", lambda m: _edit_config(m, intermediate_size=128))


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (self.marker,)


@probe("model directories", "pickled pytorch_model.bin weights (a payload that would mkdir)", "one line, exit 1; no code run")
def pickled_bin(fx: Fixtures) -> tuple[str, str]:
    model, case = fx.hf_copy("pickle")
    marker = case / "payload-ran"
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Payload(str(marker))}))
    run = kit.llmc("export", model, "-o", case / "out", timeout=300)
    if marker.exists():
        return kit.SECURITY, "the pickle's payload ran (the marker directory exists)"
    return kit.classify_cli(run, refuse=True)


# -- build cache ----------------------------------------------------------------------------------


def _build(source: Path, out: Path, cache: Path | str, **env: str) -> kit.Run:
    return kit.llmc("build", source, "-o", out, "--threads", "1", timeout=180, env={"LLMC_CACHE_DIR": str(cache), **env})


def _entries(cache: Path) -> list[Path]:
    builds = cache / "builds"
    return [p for p in builds.iterdir() if not p.name.startswith(".")] if builds.is_dir() else []


@probe("build cache", "entry's files and recorded hashes replaced consistently (model B under A's key)", "a miss: A rebuilt")
def swapped_entry(fx: Fixtures) -> tuple[str, str]:
    case = fx.fresh("cache-swap")
    cache, a, b = case / "cache", kit.relu_onnx(case / "a" / "a.onnx", 1.0), kit.relu_onnx(case / "b" / "b.onnx", 2.0)
    for source, out in ((a, "a1"), (b, "b1")):
        if _build(source, case / out, cache).rc != 0:
            raise RuntimeError(f"building {source.name} into the cache failed")
    key_a = json.loads((case / "a1" / "manifest.json").read_text())["cache"]["key"]
    key_b = json.loads((case / "b1" / "manifest.json").read_text())["cache"]["key"]
    entry_a, entry_b = cache / "builds" / key_a, cache / "builds" / key_b
    shutil.rmtree(entry_a)
    shutil.copytree(entry_b, entry_a)
    info = json.loads((entry_a / "entry.json").read_text())
    (entry_a / "entry.json").write_text(json.dumps({**info, "key": key_a}))
    run = _build(a, case / "a2", cache)
    if run.rc == 0 and (case / "a2" / "model.onnx").read_bytes() == (case / "b1" / "model.onnx").read_bytes():
        return kit.SECURITY, "served B's artifact as a cache hit for A"
    return kit.classify_cli(run, refuse=False)


@probe("build cache", "entry's model.onnx changed and only its hash record in entry.json edited to match", "a miss, or refused")
def edited_hash(fx: Fixtures) -> tuple[str, str]:
    import hashlib

    case = fx.fresh("cache-hash")
    cache, a = case / "cache", kit.relu_onnx(case / "a" / "a.onnx", 1.0)
    if _build(a, case / "a1", cache).rc != 0:
        raise RuntimeError("building into the cache failed")
    (entry,) = _entries(cache)
    model = entry / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    info = json.loads((entry / "entry.json").read_text())
    info["files"]["model.onnx"] = hashlib.sha256(model.read_bytes()).hexdigest()
    (entry / "entry.json").write_text(json.dumps(info))
    run = _build(a, case / "a2", cache)
    if run.rc == 0:
        check = kit.llmc("inspect", case / "a2", timeout=60)
        if check.rc != 0:
            return kit.WRONG, f"exit 0 with a 'hit' that fails its own check: {check.last_line()}"
    return kit.classify_cli(run, refuse=False)


def _unsafe_cache(fx: Fixtures, name: str, make_unsafe: Callable[[Path], None]) -> tuple[str, str]:
    case = fx.fresh(name)
    cache, a = case / "cache", kit.relu_onnx(case / "a" / "a.onnx", 1.0)
    cache.mkdir()
    make_unsafe(cache)
    run = _build(a, case / "a1", cache)
    if run.rc == 0 and _entries(cache):
        return kit.SECURITY, "exit 0 and an entry stored in the unsafe cache directory"
    return kit.classify_cli(run, refuse=False)


@probe("build cache", "cache dir owned by another user (chown nobody)", "refused, or bypassed")
def foreign_cache(fx: Fixtures) -> tuple[str, str]:
    if os.geteuid() != 0:
        return "not probed", "not running as root: cannot chown a directory to another user"
    return _unsafe_cache(fx, "cache-owner", lambda p: os.chown(p, 65534, 65534))


@probe("build cache", "cache dir writable by others (mode 0777)", "refused, or bypassed")
def world_writable_cache(fx: Fixtures) -> tuple[str, str]:
    return _unsafe_cache(fx, "cache-0777", lambda p: p.chmod(0o777))


@probe("build cache", "LLMC_CACHE_DIR a regular file", "one line, exit 1, before compiling")
def cache_dir_file(fx: Fixtures) -> tuple[str, str]:
    case = fx.fresh("cache-file")
    (case / "cache").write_text("not a directory\n")
    run = _build(kit.relu_onnx(case / "a.onnx", 1.0), case / "out", case / "cache")
    outcome, detail = kit.classify_cli(run, refuse=True)
    return outcome, f"{detail} ({run.seconds:.1f} s)"


@probe("build cache", "LLMC_CACHE_MAX_MB=nan", "one line, exit 1, before compiling")
def cache_max_nan(fx: Fixtures) -> tuple[str, str]:
    case = fx.fresh("cache-nan")
    run = _build(kit.relu_onnx(case / "a.onnx", 1.0), case / "out", case / "cache", LLMC_CACHE_MAX_MB="nan")
    outcome, detail = kit.classify_cli(run, refuse=True)
    return outcome, f"{detail} ({run.seconds:.1f} s)"


# -- triton ---------------------------------------------------------------------------------------


def _written_outside(outside: Path, before: dict[str, bytes]) -> list[str]:
    now = {str(p.relative_to(outside)): p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    return sorted(name for name, data in now.items() if before.get(name) != data)


def _triton_links(fx: Fixtures, name: str, plant: Callable[[Path, Path], Path]) -> tuple[str, str]:
    case = fx.fresh(name)
    outside = case / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("the victim's own bytes\n")
    before = {str(p.relative_to(outside)): p.read_bytes() for p in outside.rglob("*") if p.is_file()}
    repo = plant(case, outside)
    run = kit.llmc("triton", fx.artifact, "-o", repo, "--name", "m", timeout=120)
    changed = _written_outside(outside, before)
    if changed:
        return kit.SECURITY, f"exit {run.rc}; written through the link outside -o: {', '.join(changed)}"
    return kit.classify_cli(run, refuse=False)


@probe("triton", "-o a symlink to a directory elsewhere", "refused; nothing written through the link")
def triton_output_link(fx: Fixtures) -> tuple[str, str]:
    def plant(case: Path, outside: Path) -> Path:
        (case / "repo").symlink_to(outside, target_is_directory=True)
        return case / "repo"

    return _triton_links(fx, "triton-link", plant)


@probe("triton", "a planted partial output (repo/.m.partial a link to a directory elsewhere)", "refused or replaced; nothing written outside")
def triton_planted(fx: Fixtures) -> tuple[str, str]:
    def plant(case: Path, outside: Path) -> Path:
        (case / "repo").mkdir()
        (case / "repo" / ".m.partial").symlink_to(outside, target_is_directory=True)
        return case / "repo"

    return _triton_links(fx, "triton-planted", plant)


@probe("triton", "-o an existing regular file", "one line, exit 1")
def triton_output_file(fx: Fixtures) -> tuple[str, str]:
    case = fx.fresh("triton-file")
    (case / "repo").write_text("a file\n")
    return kit.classify_cli(kit.llmc("triton", fx.artifact, "-o", case / "repo", timeout=120), refuse=True)


def _triton_value(fx: Fixtures, flag: str, value: str) -> tuple[str, str]:
    case = fx.fresh("triton-value")
    return kit.classify_cli(kit.llmc("triton", fx.artifact, "-o", case / "repo", flag, value, timeout=120), refuse=True)


@probe("triton", "--max-batch-size -1", "one line, exit 1")
def triton_batch(fx: Fixtures) -> tuple[str, str]:
    return _triton_value(fx, "--max-batch-size", "-1")


@probe("triton", "--instances 0", "one line, exit 1")
def triton_instances(fx: Fixtures) -> tuple[str, str]:
    return _triton_value(fx, "--instances", "0")


@probe("triton", "--batch-wait-us -1", "one line, exit 1")
def triton_wait(fx: Fixtures) -> tuple[str, str]:
    return _triton_value(fx, "--batch-wait-us", "-1")


# -- chat templates (CLI) and the smaller ones ------------------------------------------------------


@probe("chat templates", "generate --chat, a template that raises", "one line, exit 1")
def template_raises(fx: Fixtures) -> tuple[str, str]:
    return kit.classify_cli(kit.llmc("generate", fx.artifact, "--chat", "--prompt", "RAISE", timeout=120), refuse=True)


@probe("chat templates", "generate --chat, a template that loops 10**10 times", "one line, exit 1, within 60 s")
def template_loops(fx: Fixtures) -> tuple[str, str]:
    return kit.classify_cli(kit.llmc("generate", fx.artifact, "--chat", "--prompt", "LOOP", timeout=60), refuse=True)


@probe("smaller", "generate --seed -1", "one line, exit 1")
def seed_negative(fx: Fixtures) -> tuple[str, str]:
    return kit.classify_cli(kit.llmc("generate", fx.artifact, "--prompt", "w5 w6", "--seed", "-1", "--temperature", "1",
                                     "--max-new-tokens", "4", timeout=120), refuse=True)


@probe("smaller", "generate --prompt with invalid UTF-8 bytes", "one line, exit 1")
def prompt_bad_utf8(fx: Fixtures) -> tuple[str, str]:
    return kit.classify_cli(kit.llmc("generate", fx.artifact, "--prompt", b"w5 \xff\xfe w6", "--max-new-tokens", "4",
                                     timeout=120), refuse=True)


@probe("smaller", "perplexity --stride 0", "one line, exit 1")
def stride_zero(fx: Fixtures) -> tuple[str, str]:
    return kit.classify_cli(kit.llmc("perplexity", fx.artifact, "--text", fx.text, "--max-length", "64", "--stride", "0",
                                     timeout=120), refuse=True)


@probe("smaller", "perplexity --max-length 1024, past the model's 256-token context", "one line, exit 1")
def window_past_context(fx: Fixtures) -> tuple[str, str]:
    return kit.classify_cli(kit.llmc("perplexity", fx.artifact, "--text", fx.text, "--max-length", "1024", timeout=180),
                            refuse=True)


@probe("smaller", "compress --minutes nan", "one line, exit 1")
def compress_nan(fx: Fixtures) -> tuple[str, str]:
    case = fx.fresh("compress-nan")
    return kit.classify_cli(kit.llmc("compress", fx.hf, "--data", fx.text, "-o", case / "out", "--minutes", "nan",
                                     timeout=240), refuse=True)


@probe("smaller", "compress of a decoder with one KV head (--heads 0.5)", "a result, or one line, exit 1")
def compress_one_kv_head(fx: Fixtures) -> tuple[str, str]:
    case = fx.fresh("compress-kv1")
    source = kit.llama_dir(case / "kv1", kv_heads=1)
    return kit.classify_cli(kit.llmc("compress", source, "--data", fx.text, "-o", case / "out", "--heads", "0.5",
                                     "--minutes", "0.05", "--allow-loss", timeout=300), refuse=False)


# -- running, tables, RESULTS.md --------------------------------------------------------------------


def run_all(only: str | None, workdir: Path | None = None) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llmc-hardening-") as tmp:
        started = time.perf_counter()
        fx = Fixtures(workdir or Path(tmp))
        print(f"fixtures built in {time.perf_counter() - started:.0f} s", flush=True)
        probes = PROBES + kit.probes(fx)
        for kind, case, expected, fn in probes:
            if only and kind != only:
                continue
            started = time.perf_counter()
            try:
                outcome, detail = fn(fx)
            except Exception as exc:  # the probe itself broke: reported, not counted
                outcome, detail = "not probed", f"the probe failed: {traceback.format_exception_only(exc)[-1].strip()}"
            seconds = time.perf_counter() - started
            results.append({"kind": kind, "case": case, "expected": expected, "outcome": outcome,
                            "detail": detail, "seconds": round(seconds, 1)})
            print(f"[{kind}] {case}: {outcome} ({seconds:.1f} s) {detail}", flush=True)
        kit.stop(fx)
    return results


def tables(results: list[dict[str, Any]]) -> str:
    lines = []
    for kind in KINDS:
        rows = [r for r in results if r["kind"] == kind]
        if not rows:
            continue
        lines += [f"**{kind}**", "", "| case | expected | outcome | what happened |", "|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['expected']} | {r['outcome']} | {_cell(r['detail'])} |" for r in rows]
        lines.append("")
    counted = Counter(r["outcome"] for r in results if r["outcome"] in kit.OUTCOMES)
    total = sum(counted.values())
    lines += ["| outcome | before (issue 33) | after |", "|---|---|---|"]
    lines += [f"| {o} | {BEFORE[o]} | {counted.get(o, 0)} |" for o in kit.OUTCOMES]
    lines += [f"| cases | {sum(BEFORE.values())} | {total} |", ""]
    skipped = [(r["kind"], r["case"], r["detail"]) for r in results if r["outcome"] not in kit.OUTCOMES] + NOT_PROBED
    if skipped:
        lines += ["Not probed: " + "; ".join(f"{c} ({k}): {why}" for k, c, why in skipped) + "."]
    return "\n".join(lines)


def _cell(text: str) -> str:
    text = re.sub(r"/tmp/llmc-hardening-\w+/cases/", "", text)  # the temp dir's name says nothing
    return text.replace("|", "\\|").replace("\n", " ")[:150]


def render(results: list[dict[str, Any]]) -> None:
    text = (
        f"{BEGIN}\n### Hardening: issue 33's adversarial cases, before and after\n\n"
        f"`python -m benchmarks.hardening --render`, on commit {_revision()}. {machine_line()}\n"
        "Each case is one probe through the real CLI or a real `llmc serve` (uvicorn), on fixtures built from "
        "random weights. handled: one-line error (exit 1/2, a 4xx JSON error) or a correct result; traceback: a "
        "Python traceback, a crash or an HTTP 5xx; wrong success: exit 0 / 200 where the input should be refused; "
        "security: a file from outside the model directory in an output, a write through a link, a swapped or "
        "unsafe cache used; hang: past the probe's timeout, or /health over 100 ms. \"Before\" is the issue's "
        "count on the code it probed (by outcome only; it had no hang column: its hangs are counted in its four); "
        "\"after\" is this run's.\n\n"
        f"{tables(results)}\n{END}"
    )
    current = RESULTS.read_text()
    if BEGIN in current and END in current:
        write_section(BEGIN, END, text)
    else:
        RESULTS.write_text(current.replace(INTEGRITY_END, text + "\n\n" + INTEGRITY_END, 1))


def _revision() -> str:
    import subprocess

    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=KINDS, help="Probe one kind only.")
    parser.add_argument("--render", action="store_true", help="Write the subsection into benchmarks/RESULTS.md.")
    parser.add_argument("--from-json", action="store_true", help="Render the last results.json without probing.")
    parser.add_argument("--workdir", type=Path, help="Keep fixtures here (reused by the next run) instead of a temp dir.")
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(OUT.read_text())["results"]
    else:
        results = run_all(args.only, args.workdir and args.workdir.resolve())
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps({"results": results, "before": BEFORE}, indent=1) + "\n")
    print(tables(results))
    if args.render:
        render(results)


if __name__ == "__main__":
    main()
