# make test / make demo build .venv themselves on first use (python3 -m venv, then pip):
# torch first, pinned, so that a machine with a local CPU wheel takes it and a user's
# machine gets the normal build; then this project, editable, with its test extras.
# The stamp file re-runs the installs only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hodor-installed
TORCH_VERSION := 2.13.0
CKPT ?=

.PHONY: test demo lint venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e '.[test]'
	touch $@

test: $(STAMP)
	$(PY) -m pytest -q

# make demo [CKPT=path/to/model.pth]: without CKPT, a random-weight checkpoint is built.
demo: $(STAMP)
	$(PY) scripts/make_demo.py $(if $(CKPT),--checkpoint "$(CKPT)")

lint: $(STAMP)
	$(VENV)/bin/ruff check .
