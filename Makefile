# Two commands: `make course` runs the course, `make test` proves it works.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.course-installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: course test lab clean distclean setup check-profile student

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
	@$(BIN)/python -m helpers setup

course: check-profile setup
	$(BIN)/python -m helpers.course $(NOTEBOOKS)

test: setup
	COURSE_PROFILE=smoke COURSE_BUILD_DIR=build/smoke $(BIN)/python -m pytest -q tests --nbval-lax notebooks

# Notebooks without the solutions, for a class; then check every copy runs up to its first exercise.
student: setup
	$(BIN)/python -m helpers.student
	STUDENT_CHECK_ALL=1 COURSE_PROFILE=smoke COURSE_BUILD_DIR=build/smoke $(BIN)/python -m pytest -q tests/test_student.py

lab: setup
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf build .pytest_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .cache
