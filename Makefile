# make demo / make test / make lint build .venv themselves on first use (python3 -m venv, then pip):
# torch first, pinned, so that a machine with a local CPU wheel takes it and a user's machine
# gets the normal build; then this project, editable. `make demo` installs only what running
# needs (torch and the base dependencies); `make test` and `make lint` add the test extras
# (Triton, ONNX, ONNX Runtime, TensorRT for RTX, pytest, ruff, matplotlib, Ray, the J&F checks)
# and the benchmark's peers.
# Stamp files re-run the installs only when pyproject.toml changes.
#
# Without an NVIDIA GPU, take torch's CPU build (about 190 MB instead of about 1.9 GB of CUDA
# wheels): make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.hodor-installed-run
TEST_STAMP := $(VENV)/.hodor-installed-test
TORCH_VERSION := 2.13.0
TORCH_INDEX ?=
CKPT ?=

.PHONY: test demo lint venv venv-run

# venv-run: torch and the runtime (hodor-run, the demo); venv: that plus the test extras.
venv-run: $(RUN_STAMP)
venv: $(TEST_STAMP)

$(RUN_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "hodor-engine needs Python >= 3.11, and $(PYTHON) is $$($(PYTHON) --version 2>&1);" \
		     "run make again with PYTHON=python3.11 (or newer)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)")
	$(PY) -m pip install -e .
	touch $@

# The peers (benchmarks/fps.py --peers) are installed too, so that their smoke test runs: Cutie
# from its wheel, SAM 2 built without its CUDA extension and without its declared torchvision,
# which its video predictor does not import and which no CPU wheel matches for this torch.
$(TEST_STAMP): $(RUN_STAMP)
	$(PY) -m pip install -e '.[test]'
	$(PY) -m pip install rf-cutie==1.0.1 'hydra-core>=1.3.2' 'iopath>=0.1.10' 'einops>=0.6'
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --no-deps --no-build-isolation sam2==1.1.0
	touch $@

test: $(TEST_STAMP)
	$(PY) -m pytest -q

# make demo [CKPT=path/to/model.pth]: without CKPT, a random-weight checkpoint is built.
demo: $(RUN_STAMP)
	$(PY) scripts/make_demo.py $(if $(CKPT),--checkpoint "$(CKPT)")

lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check .
