# `make demo` and `make test` each set up .venv from scratch when needed.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= .demo
MODEL  ?=

.PHONY: install test demo clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull several GB of CUDA packages
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[export,test]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q

# Until the embedded model lands, the demo exports a small random checkpoint in the real layout
# (pass MODEL=path/to/checkpoint to export your own).
demo: install
	@if [ -z "$(MODEL)" ]; then \
	  rm -rf $(DEMO)/checkpoint && $(PY) bench/synthetic_checkpoint.py --preset tiny -o $(DEMO)/checkpoint; fi
	$(VENV)/bin/phi4edge export $(or $(MODEL),$(DEMO)/checkpoint) -o $(DEMO)/bundle --force
	$(VENV)/bin/phi4edge inspect $(DEMO)/bundle
	$(VENV)/bin/phi4edge run $(DEMO)/bundle --prompt "Explain GQA in one paragraph." --max-new-tokens 32

clean:
	rm -rf $(DEMO) .pytest_cache
