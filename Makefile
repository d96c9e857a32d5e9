# Two entry points: `make serve` (set up, quantize if needed, run the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -c constraints.txt
MODEL ?= BAAI/bge-m3
PRECISION ?= int8
MODEL_NAME := $(shell basename "$(MODEL)" | tr '[:upper:]' '[:lower:]')
MODEL_DIR ?= models/$(MODEL_NAME)-$(PRECISION)

.PHONY: venv install serve test test-quick lint bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml constraints.txt
	$(PIP) -e '.[dev]'
	@# torchvision breaks `import transformers` beside this torch ("operator torchvision::nms does not exist").
	$(BIN)/pip uninstall -y -q torchvision 2>/dev/null || true
	touch $@

install: $(VENV)/.installed

$(MODEL_DIR)/ovembed.json: | $(VENV)/.installed
	$(BIN)/ovembed quantize "$(MODEL)" --precision $(PRECISION) --output $(MODEL_DIR) $(if $(MODEL_ID),--model-id $(MODEL_ID))

serve: $(VENV)/.installed $(MODEL_DIR)/ovembed.json
	$(BIN)/ovembed serve --model $(MODEL_DIR) $(SERVE_ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick loop: everything but soaks, long benchmarks and tests over ~20 s.
test-quick: $(VENV)/.installed
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests

bench: $(VENV)/.installed
	$(BIN)/ovembed bench engine --corpus ../shared/data/xquad/en/corpus.jsonl $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info
