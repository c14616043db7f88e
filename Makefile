# Two commands do all the set-up: `make demo` and `make test`.
# Each creates .venv and installs the pinned stack into it when it is missing
# or older than pyproject.toml, then does its job.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export DS_ACCELERATOR ?= cpu
export PYTHONUNBUFFERED := 1
# the environment's tools (torchrun, ninja) before the system's
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/unimodal demo

# the layers contract and the linters first (seconds), then the suite
test: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf runs data/demo
