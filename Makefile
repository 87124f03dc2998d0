# Two commands: `make course` runs the course, `make test` proves it works.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.course-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Offline lab machines: `make course WHEELHOUSE=/path/to/wheelhouse` installs from that folder
# only (no index), and restores the converted models and data cached in it.
ifdef WHEELHOUSE
export PIP_NO_INDEX := 1
export PIP_FIND_LINKS := $(abspath $(WHEELHOUSE))
endif

.PHONY: course test lab clean distclean setup check-profile student wheelhouse browser-check

# Fail at once on a bad COURSE_PROFILE, before anything is installed (standard library only).
check-profile:
	@$(PYTHON) -m helpers.config check

# Created once; later runs only check the stamp. torch==2.13.0 goes in first: on machines that
# keep its CPU wheel (CI, this course's lab machines) pip takes that file instead of a multi-GB
# CUDA build; on a GPU machine the same line gives the CUDA build.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0" \
	  || echo "torch==2.13.0 not available here; requirements.txt picks a torch build"
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	@touch $@

# Offline assets: the converted multilingual-e5-small, the extracted VADER snippets (quick when done).
setup: check-profile $(STAMP)
ifdef WHEELHOUSE
	@test ! -d $(WHEELHOUSE)/cache || cp -rn $(WHEELHOUSE)/cache/. .cache/
endif
	@$(BIN)/python -m helpers setup

course: check-profile setup
	$(BIN)/python -m helpers.course $(NOTEBOOKS)

# Each notebook cell gets the smoke profile's cell_timeout_s (minutes): a hung kernel is named, fast.
# Two processes (pytest-xdist): notebooks 03-07 in order in one, the rest beside it (conftest.py),
# one thread each: two processes of two OpenMP threads on two cores wait on each other.
test: setup
	OMP_NUM_THREADS=1 COURSE_PROFILE=smoke COURSE_BUILD_DIR=build/smoke $(BIN)/python -m pytest -q -n 2 tests --nbval-lax notebooks \
	  --nbval-cell-timeout=$$($(BIN)/python -c 'from helpers.config import PROFILES; print(PROFILES["smoke"].cell_timeout_s)')

# Notebooks without the solutions, for a class; then check every copy runs up to its first exercise.
student: setup
	$(BIN)/python -m helpers.student
	STUDENT_CHECK_ALL=1 COURSE_PROFILE=smoke COURSE_BUILD_DIR=build/smoke $(BIN)/python -m pytest -q tests/test_student.py

# Everything the course installs, for this platform, in one folder (wheelhouse/ by default),
# plus the converted models and extracted data; then prove a fresh venv installs from it alone.
WHEELHOUSE_DIR ?= wheelhouse
wheelhouse: setup
	mkdir -p $(WHEELHOUSE_DIR)
	$(BIN)/python -m pip download -q -d $(WHEELHOUSE_DIR) "torch==2.13.0" -r requirements.txt pip setuptools wheel
	$(BIN)/python -m pip download -q -d $(WHEELHOUSE_DIR) --no-deps --no-binary :all: vaderSentiment==3.3.2
	rm -rf $(WHEELHOUSE_DIR)/cache && mkdir -p $(WHEELHOUSE_DIR)/cache && cp -r .cache/models .cache/data $(WHEELHOUSE_DIR)/cache/
	du -sh $(WHEELHOUSE_DIR)
	WHEELHOUSE=$(abspath $(WHEELHOUSE_DIR)) $(BIN)/python -m pytest -q tests/test_wheelhouse.py

# Notebooks 01 and 04 in JupyterLab in headless Chromium (smoke profile): widgets and plots render,
# Chinese text is drawn with a font that has its glyphs, no errors; screenshots in build/screenshots/.
# Installs chromium and fonts-noto-cjk (apt) and playwright-core (npm) if missing.
browser-check: setup
	BROWSER_CHECK=1 $(BIN)/python -m pytest -q -rs tests/test_browser.py

lab: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .cache
