# DiffuseTV: `make run` starts the local stack, `make test` runs the tests. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
PORT ?= 8000
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC) $(TORCH_INDEX_URL)' | cksum | cut -d' ' -f1)

.PHONY: python deps-run deps-test deps install run test test-fast lint format clean
# One step at a time: the system packages go in before the virtualenv is made from the interpreter.
.NOTPARALLEL:

# The interpreter the virtualenv is made from: Python 3.11 or 3.12 (what pyproject.toml admits).
python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: no '$(PYTHON)' here; install Python 3.11 or 3.12, or name one: make $(or $(MAKECMDGOALS),run) PYTHON=python3.12" >&2; exit 2; }
	@$(PYTHON) -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' || { echo "make: '$(PYTHON)' is Python $$($(PYTHON) -c 'import platform; print(platform.python_version())'); DiffuseTV needs 3.11 or 3.12: make $(or $(MAKECMDGOALS),run) PYTHON=python3.12 (or python3.11)" >&2; exit 2; }

# The system packages each target needs (the table is diffusetv/prerequisites.py): checked every time,
# installed with apt only when missing (as root, or with `sudo -n`).
deps-run: python
	@$(PYTHON) -m diffusetv.prerequisites install run

deps-test: python
	@$(PYTHON) -m diffusetv.prerequisites install test

deps: deps-test

$(BIN)/python: | deps-run
	$(PYTHON) -m venv $(VENV)

# torch first, from TORCH_SPEC (a CPU or CUDA build of the user's choice), then the project.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) '$(TORCH_SPEC)'
	$(BIN)/pip install -e '.[worker,dev,embedded,bench]'
	touch $@

install: $(STAMP)

run: deps-run $(STAMP)
	$(BIN)/diffusetv up --port $(PORT)

test: deps-test $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: deps-test $(STAMP)
	$(BIN)/python -m pytest -m 'not slow' $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
