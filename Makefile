# Two entry points, both self-contained on a fresh machine:
#   make demo   -> set up .venv and run the BIDS App on its embedded demo dataset (both levels, INR and ANTs)
#   make test   -> set up .venv and run the test suite
# On a machine without an NVIDIA driver, torch==2.13.0 (the CPU wheel) is installed first so that
# the package's torch range is already satisfied and no multi-GB CUDA build is pulled.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.inrreg-installed

.PHONY: setup demo test clean
setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install -q torch==2.13.0; fi
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/inrreg-bids --demo demo_output

test: setup
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) demo_output
