# One-command set-up: `make demo` and `make test` create .venv on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: install demo test test-slow bench lint clean

install: $(STAMP)

# torch: the local CPU build, installed on its own first so nothing pulls a CUDA torch.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,export,dev]'
	@if [ "$(notdir $(CURDIR))" = llmc ]; then echo "warning: this checkout is a folder named llmc: a script run from its parent folder imports it (an empty namespace package) instead of llmc; see README, Set-up" >&2; fi
	touch $(STAMP)

demo: install
	$(PY) -m benchmarks.demo

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

lint: install
	$(PY) -m ruff check llmc tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .cache
