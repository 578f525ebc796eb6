# DiffuseTV: `make run` starts the local stack, `make test` runs the tests. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
PORT ?= 8000
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC) $(TORCH_INDEX_URL)' | cksum | cut -d' ' -f1)

.PHONY: install run test test-fast lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first, from TORCH_SPEC (a CPU or CUDA build of the user's choice), then the project.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) '$(TORCH_SPEC)'
	$(BIN)/pip install -e '.[worker,dev,embedded,bench]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/diffusetv up --port $(PORT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow' $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
