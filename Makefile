# Two entry points, both self-contained on a fresh machine:
#   make demo   -> set up .venv and run the BIDS App on its embedded demo dataset (both levels, INR and ANTs)
#   make test   -> set up .venv and run the test suite
# The install itself is .ci/install, the one install step the Dockerfile runs too: on a machine without
# an NVIDIA driver, torch==2.13.0 (the CPU wheel) is installed first so that the package's torch range is
# already satisfied and no multi-GB CUDA build is pulled. VENV can be overridden (make setup VENV=/tmp/v).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.inrreg-installed

.PHONY: setup demo test clean gpu-check
setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml .ci/install
	python3 -m venv $(VENV)
	.ci/install $(PY) test
	touch $@

demo: setup
	$(VENV)/bin/inrreg-bids --demo demo_output

test: setup
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) demo_output

# Not an entry point for users: the one-shot device check (benchmarks/gpu_check.py, see
# benchmarks/README.md). It runs with the machine's own Python and torch (GPU_PY), the source tree
# on PYTHONPATH, no setup; the JSON goes to $(OUT) (on the device machine $OUT is already set).
GPU_PY ?= python3
OUT ?= gpu_check_out
gpu-check:
	PYTHONPATH=. $(GPU_PY) benchmarks/gpu_check.py --out $(OUT)
