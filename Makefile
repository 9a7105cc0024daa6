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

# The embedded tiny Phi-4-multimodal (models/embedded) exported to int4, then a text, an image and
# an audio prompt. MODEL=path/to/checkpoint exports and runs your own checkpoint instead.
demo: install
ifeq ($(MODEL),)
	$(VENV)/bin/phi4edge demo --bundle $(DEMO)/embedded-int4 --force
	$(VENV)/bin/phi4edge inspect $(DEMO)/embedded-int4 --no-verify
else
	$(VENV)/bin/phi4edge export $(MODEL) -o $(DEMO)/bundle --force
	$(VENV)/bin/phi4edge inspect $(DEMO)/bundle
	$(VENV)/bin/phi4edge run $(DEMO)/bundle --prompt "Explain GQA in one paragraph." --max-new-tokens 32
endif

clean:
	rm -rf $(DEMO) .pytest_cache
