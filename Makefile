# The two commands: `make book` and `make test`. Each bootstraps .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# TORCH_PREFERRED is tried first (a machine whose pip cache holds that CPU wheel installs it without a download);
# when it is unavailable, `torch>=2.4` resolves as usual. The pin lives here, never in pyproject.toml.
TORCH_PREFERRED ?= torch==2.13.0

.PHONY: help install test test-fast book lab bench clean browser-deps grading-deps

help:
	@echo "make book   execute every chapter and build the site into book/_build/html"
	@echo "make test   run the whole test suite"
	@echo "make lab    open the chapters in JupyterLab"
	@echo "make bench  run the benchmarks in benchmarks/"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_PREFERRED)" || $(BIN)/pip install --quiet "torch>=2.4"
	$(BIN)/pip install --quiet -e ".[course,dev]"
	touch $(STAMP)

install: $(STAMP)

# Two pytest workers on two cores: one torch thread each, or OpenMP threads fight over the cores (10x slower).
# --dist loadfile keeps each test file on one worker (the book tests share one build; loadgroup is ignored by
# pytest-xdist 3.8 under pytest 9).
test: $(STAMP) browser-deps grading-deps
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -m "not slow and not browser"

book: $(STAMP)
	$(BIN)/python book/build.py

# The browser tests drive Debian's chromium with Playwright (from the dev extra). Install chromium with apt when it
# is missing and apt-get is usable (root); otherwise carry on, and the browser tests skip saying why.
browser-deps:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y chromium || (apt-get update && apt-get install -y chromium) \
		|| echo "browser-deps: could not install chromium; the browser tests will skip"; \
	else echo "browser-deps: /usr/bin/chromium is missing and apt-get needs root; the browser tests will skip"; fi

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks

bench: $(STAMP)
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf book/_build

# Grading runs every submission's kernel in Debian's bubblewrap sandbox (assignments/sandbox.py). Install it with apt
# when it is missing and apt-get is usable (root); otherwise say so: grade.py then refuses to grade, and the grading
# tests skip, saying why.
grading-deps:
	@if command -v bwrap >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y bubblewrap || (apt-get update && apt-get install -y bubblewrap) \
		|| echo "grading-deps: could not install bubblewrap; grading and its tests need it"; \
	else echo "grading-deps: bwrap is missing and apt-get needs root: sudo apt-get install bubblewrap"; fi

.PHONY: assignments
# The student release of every assignment under assignments/release/ (build output, gitignored).
assignments: $(STAMP) grading-deps
	cd assignments && for a in source/*/; do a=$$(basename $$a); \
		PATH="$(CURDIR)/$(BIN):$$PATH" ../$(BIN)/nbgrader generate_assignment $$a --force || exit 1; done
