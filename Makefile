# Two entry points: `make serve` (set up, quantize if needed, run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt
# PyTorch's CPU wheels. PyPI's torch for Linux is the CUDA build, which pulls several GB of nvidia-* and triton.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# What `make serve` needs: the service, `ovembed quantize` (convert) and OpenAI token ids on /v1 (openai-ids).
SERVE_EXTRAS := convert,openai-ids
MODEL ?= BAAI/bge-m3
PRECISION ?= int8
# Empty: `ovembed quantize` names the folder from the model's id, models/<name>-<precision>.
MODEL_DIR ?=
QUANTIZE = $(BIN)/ovembed quantize "$(MODEL)" --precision "$(PRECISION)" $(if $(MODEL_ID),--model-id "$(MODEL_ID)") \
	$(if $(MODEL_DIR),--output "$(MODEL_DIR)")

.PHONY: install install-dev quantize serve test test-quick lint bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# One venv, one stamp per install set. PyTorch goes in first, alone, from PyTorch's CPU index (pinned by
# constraints.txt; --upgrade replaces a CUDA build left by an older install); the sets after it find it installed
# and never ask PyPI for torch. Only this one package is looked up there: where that index is unreachable pip
# retries each package it looks up for ~8 s before using another source.
$(VENV)/.torch-cpu: $(BIN)/activate constraints.txt
	$(PIP) --index-url $(TORCH_INDEX) --upgrade --no-deps torch
	touch $@

$(VENV)/.installed-serve: $(VENV)/.torch-cpu pyproject.toml constraints.txt
	$(PIP) -e '.[$(SERVE_EXTRAS)]'
	touch $@

# The dev set holds the serve set (tests/unit/test_install.py checks it), so it stamps both.
$(VENV)/.installed-dev: $(VENV)/.torch-cpu pyproject.toml constraints.txt
	$(PIP) -e '.[dev]'
	@# torchvision breaks `import transformers` beside this torch ("operator torchvision::nms does not exist").
	$(BIN)/pip uninstall -y -q torchvision 2>/dev/null || true
	touch $@ $(VENV)/.installed-serve

install: $(VENV)/.installed-serve

install-dev: $(VENV)/.installed-dev

# Quantize MODEL unless the folder `ovembed quantize` names for it already holds it (same source, same id, same
# precision, made after the source's files last changed): another MODEL is a new folder or a new quantize.
quantize: $(VENV)/.installed-serve
	$(QUANTIZE) --if-changed

serve: quantize
	@folder="$$($(QUANTIZE) --dry-run)" && echo "$(BIN)/ovembed serve --model $$folder $(SERVE_ARGS)" && \
		exec $(BIN)/ovembed serve --model "$$folder" $(SERVE_ARGS)

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick loop: everything but soaks, long benchmarks and tests over ~20 s.
test-quick: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests

bench: $(VENV)/.installed-dev
	$(BIN)/ovembed bench engine --corpus ../shared/data/xquad/en/corpus.jsonl $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info
