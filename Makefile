# The two commands: `make book` and `make test`. Each bootstraps .venv when missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# TORCH_PREFERRED is tried first (a machine whose pip cache holds that CPU wheel installs it without a download);
# when it is unavailable, `torch>=2.4` resolves as usual. The pin lives here, never in pyproject.toml.
TORCH_PREFERRED ?= torch==2.13.0

.PHONY: hub hub-deps help install test test-fast book lab bench clean browser-deps grading-deps repository translations

help:
	@echo "make book   execute every chapter and build the site into book/_build/html"
	@echo "make test   run the whole test suite"
	@echo "make lab    open working copies of the chapters (lab/) in JupyterLab"
	@echo "make bench  run the benchmarks in benchmarks/"
	@echo "make hub    start the course hub on 127.0.0.1:8000 (as root; DEMO=1 creates three demo users)"

# One checkout, one venv. A .venv that resolves outside this checkout (a link to another clone's or worktree's
# venv) belongs to that checkout: its editable install points there, and `pip install -e .` from here would
# re-point it, breaking the other checkout. Such a venv is used as it is, with PYTHONPATH=$(CURDIR) so that this
# checkout's minimoe is the one imported (PYTHONPATH comes before the editable install's finder), and nothing is
# installed into it. A venv merely active on PATH is never used: the targets run $(BIN)/…, and a missing .venv is
# created here.
FOREIGN_VENV := $(filter-out $(realpath $(CURDIR))/$(VENV),$(realpath $(VENV)))
ifeq ($(FOREIGN_VENV),)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_PREFERRED)" || $(BIN)/pip install --quiet "torch>=2.4"
	$(BIN)/pip install --quiet -e ".[course,dev]"
	touch $(STAMP)
else
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
$(info make: $(VENV) is $(FOREIGN_VENV), another checkout's venv: used as it is, with PYTHONPATH=$(CURDIR); nothing is installed into it)
$(STAMP):
	@test -x $(BIN)/python || { echo "make: $(FOREIGN_VENV) has no python; remove the $(VENV) link to get a venv of this checkout"; exit 1; }
endif

install: $(STAMP)

# Two pytest workers on two cores: one torch thread each, or OpenMP threads fight over the cores (10x slower).
# --dist loadfile keeps each test file on one worker (the book tests share one build; loadgroup is ignored by
# pytest-xdist 3.8 under pytest 9). --no-loadscope-reorder hands the files out in the order tests/conftest.py
# collects them: the book build first, so it runs from the start on one worker while the other takes the rest.
test: $(STAMP) browser-deps grading-deps hub-deps
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 -m "not slow and not browser"

# `make book` fails on any untranslated or fuzzy message of the 繁體中文 edition, naming it (docs/translation.md);
# `make book BOOK_FLAGS=--allow-untranslated` builds a preview with English standing in.
BOOK_FLAGS ?=
book: $(STAMP)
	$(BIN)/python book/build.py $(BOOK_FLAGS)

# After an edit to English prose: re-extract the messages and update the 繁體中文 catalogs in book/locales (new
# messages empty, changed ones fuzzy), then list what needs translating (docs/translation.md).
translations: $(STAMP)
	$(BIN)/python book/i18n.py translations

# The browser tests drive Debian's chromium with Playwright (from the dev extra), and check the 繁體中文 glossary as
# rendered text, which needs a CJK font. Install both with apt when either is missing and apt-get is usable (root);
# otherwise carry on, and the browser tests skip saying why.
BROWSER_PACKAGES := chromium fonts-noto-cjk
browser-deps:
	@if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get install -y $(BROWSER_PACKAGES) || (apt-get update && apt-get install -y $(BROWSER_PACKAGES)) \
		|| echo "browser-deps: could not install $(BROWSER_PACKAGES); the browser tests will skip"; \
	else echo "browser-deps: $(BROWSER_PACKAGES) missing and apt-get needs root; the browser tests will skip"; fi

# JupyterLab saves outputs into the notebooks it opens, so it opens working copies in lab/ (ignored by git), never
# the tracked notebooks/: a `git pull` then never conflicts with what a student ran. A chapter is copied when lab/
# has no copy yet; after a pull, delete lab/NN_name.ipynb to take the new version (make lab names the ones that
# changed). nbgrader's server extensions are for the assignments (assignments/README.md) and stay off here.
LAB_DIR ?= lab
NBGRADER_OFF := {'nbgrader.server_extensions.formgrader': False, 'nbgrader.server_extensions.assignment_list': False, \
	'nbgrader.server_extensions.course_list': False, 'nbgrader.server_extensions.validate_assignment': False}
# Name the course's public repository: `make repository URL=https://github.com/<owner>/minimoe` (book/repository.py).
repository:
	$(PY) book/repository.py "$(URL)"

lab: $(STAMP)
	@mkdir -p $(LAB_DIR)
	@for nb in notebooks/*.ipynb; do copy=$(LAB_DIR)/$$(basename $$nb); \
		if [ ! -e $$copy ]; then cp $$nb $$copy; \
		elif ! cmp -s $$nb $$copy && [ $$nb -nt $$copy ]; then \
			echo "lab: $$nb is newer than your $$copy; delete your copy to take the new version"; fi; done
	cd $(LAB_DIR) && $(CURDIR)/$(BIN)/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root) \
		--ServerApp.jpserver_extensions="$(NBGRADER_OFF)" $(LAB_ARGS)

# Every benchmark but book_builds.py (five clean builds of the book, about an hour: run it on its own).
bench: $(STAMP)
	for f in $(filter-out benchmarks/book_builds.py,$(wildcard benchmarks/*.py)); do \
		echo "== $$f"; $(BIN)/python $$f || exit 1; done

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

# The course hub (hub/README.md): JupyterHub with nbgrader's exchange, on 127.0.0.1:8000. Its proxy comes from npm.
hub-deps:
	@test -x hub/node_modules/.bin/configurable-http-proxy || npm install --silent --no-audit --no-fund --prefix hub \
		configurable-http-proxy@5 || echo "hub-deps: npm could not install configurable-http-proxy; the hub test will skip"

hub: $(STAMP) hub-deps
	$(BIN)/python hub/prepare.py $(if $(DEMO),--demo-users)
	set -a; for f in hub/_state/*.env; do . $$f; done; set +a; \
		$(BIN)/jupyterhub -f hub/jupyterhub_config.py
