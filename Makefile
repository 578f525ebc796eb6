# DiffuseTV: `make run` starts the local stack, `make test` runs the tests. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
PORT ?= 8000
PYTEST_ARGS ?=
UV_SPEC ?= uv==0.13.8
CHECKOV_SPEC ?= checkov==3.3.30
SCAN_VENV ?= .venv-scan
# Where `make lock` finds torch's CPU build (it is not on the main index): the Dockerfile's TORCH_INDEX_URL by
# default, or TORCH_CPU_FIND_LINKS=DIR, a folder holding the wheel.
TORCH_CPU_INDEX_URL ?= $(if $(TORCH_CPU_FIND_LINKS),,$(shell sed -n 's/^ARG TORCH_INDEX_URL=//p' Dockerfile))
TORCH_CPU_FIND_LINKS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC) $(TORCH_INDEX_URL)' | cksum | cut -d' ' -f1)

.PHONY: python deps-run deps-test deps install run test test-fast lint format lock scan clean
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
	$(BIN)/pip install -e '.[worker,dev,embedded,bench,s3]' -e clients/python
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

# The image lock files (deploy/locks/*.txt, with hashes) from pyproject.toml, by uv at a pinned version.
lock: $(STAMP)
	$(BIN)/pip install '$(UV_SPEC)'
	UV=$(BIN)/uv TORCH_CPU_INDEX_URL='$(TORCH_CPU_INDEX_URL)' TORCH_CPU_FIND_LINKS='$(TORCH_CPU_FIND_LINKS)' deploy/locks/generate.sh

# checkov on the Dockerfile and the Kubernetes manifests, in a venv of its own (its pins clash with the project's).
# Each skip carries its reason where it is (a `checkov:skip` comment or a `checkov.io/skip` annotation).
$(SCAN_VENV)/bin/checkov: | python
	$(PYTHON) -m venv $(SCAN_VENV)
	$(SCAN_VENV)/bin/pip install '$(CHECKOV_SPEC)'

scan: $(SCAN_VENV)/bin/checkov
	$(SCAN_VENV)/bin/checkov --skip-download --compact --quiet --framework dockerfile -f Dockerfile
	$(SCAN_VENV)/bin/checkov --skip-download --compact --quiet --framework kubernetes -d deploy/k8s

clean:
	rm -rf $(VENV) $(SCAN_VENV) .pytest_cache .ruff_cache *.egg-info
