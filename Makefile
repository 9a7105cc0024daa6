# `make demo` and `make test` each set up .venv from scratch when needed, with the exact versions
# in constraints.txt (`make lock` regenerates it; see README, "Upgrading dependencies").
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   ?= .demo
MODEL  ?=
PIN    := -c constraints.txt

.PHONY: install test lint demo clean lock fuzz test-avx2

$(STAMP): pyproject.toml constraints.txt Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull several GB of CUDA packages
	$(PY) -m pip install -q $(PIN) torch==2.13.0
	$(PY) -m pip install -q $(PIN) -e '.[export,test]'
	touch $(STAMP)

install: $(STAMP)

# The Python suite, then the Kotlin engine's JVM tests against it (mk/android.mk).
test: install lint
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory android-test

# ruff (lint + import order), mypy, and node's syntax check of the browser runtime. mypy reads the
# installed package's shape from a link tree (the top-level folders are subpackages of phi4edge only
# through pyproject's package-dir mapping).
TYPECHECK := build/typecheck
SOURCES   := phi4edge export runtime quant models tests bench scripts
lint: install
	$(VENV)/bin/ruff check $(SOURCES)
	# the browser runtime's JavaScript parses (it runs only in `make browser-check`)
	for f in runtime/web/*.js runtime/web/test/*.js runtime/web/test/*.mjs; do node --check $$f || exit 1; done
	rm -rf $(TYPECHECK) && mkdir -p $(TYPECHECK)/phi4edge
	ln -s $(CURDIR)/phi4edge/*.py $(TYPECHECK)/phi4edge/
	for d in export runtime quant models; do ln -s $(CURDIR)/$$d $(TYPECHECK)/phi4edge/$$d; done
	cd $(TYPECHECK) && MYPYPATH=. $(CURDIR)/$(VENV)/bin/mypy -p phi4edge --config-file $(CURDIR)/pyproject.toml

# More fuzzing than `make test` runs, with fresh randomness each time.
FUZZ_EXAMPLES ?= 10000
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -s tests/test_fuzz.py

# The suite on an emulated AVX2-only CPU (qemu-user's Haswell model less the features TCG cannot
# emulate, which would print warnings; Debian's qemu-user package). Slow where torch computes; run
# on demand on an AVX-512 machine, not in `make test`.
HASWELL := qemu-x86_64 -cpu Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm
test-avx2: install
	command -v qemu-x86_64 >/dev/null || apt-get install -y -qq qemu-user
	PHI4EDGE_PYTHON_WRAPPER="$(HASWELL)" $(HASWELL) $(PY) -m pytest -q -p no:cacheprovider $(ARGS)

# Regenerate constraints.txt from the newest versions pyproject.toml allows.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q torch==2.13.0
	.venv-lock/bin/pip install -q -e '.[export,test]'
	head -4 constraints.txt > constraints.new
	.venv-lock/bin/pip freeze --exclude-editable | grep -v '^phi4edge' >> constraints.new
	mv constraints.new constraints.txt && rm -rf .venv-lock

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

# Slower checks with their own targets: mk/*.mk (android-test, android-apk, arm64-check, ...).
include $(wildcard mk/*.mk)

clean:
	rm -rf $(DEMO) .pytest_cache
