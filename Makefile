# Two entry points, both self-contained on a fresh machine:
#   make demo   -> set up .venv and run the BIDS App on its embedded demo dataset (both levels, INR and ANTs)
#   make test   -> set up .venv and run the test suite
# The install itself is .ci/install, the one install step the Dockerfile runs too: on a machine without
# an NVIDIA driver, torch==2.13.0 (the CPU wheel) is installed first so that the package's torch range is
# already satisfied and no multi-GB CUDA build is pulled. VENV can be overridden (make setup VENV=/tmp/v).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.inrreg-installed

.PHONY: setup demo test clean
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
