# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv when missing and install what they need; re-running is cheap.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.scanflow-installed
DEB_PACKAGES ?= dataset-fashion-mnist
# The browser test drives Debian's Chromium through Playwright (Playwright's own browser download is not needed).
# The load test runs a Prefect server on a private PostgreSQL cluster (tests/postgres.py), as production does.
TEST_DEB_PACKAGES ?= chromium postgresql
# The container tests (always on in CI, opt-in elsewhere with SCANFLOW_DOCKER_TESTS=1) need a Docker daemon and
# debootstrap; CI also validates infra/compose.yaml with docker-compose.
ifneq ($(filter true,$(CI))$(filter 1,$(SCANFLOW_DOCKER_TESTS)),)
TEST_DEB_PACKAGES += docker.io docker-compose debootstrap
endif
# Two workers, a test module each at a time: the suite waits on its servers (start-ups, polls, restarts) about a
# third of its time, and the other worker fills it. Modules go out in the order of tests/ (the end-to-end modules
# of tests/flows, minutes each, first; the unit modules last, to even out the end), not pytest-xdist's default of
# the most tests first, which left the longest one-test modules for last. `make test PYTEST_ARGS=` runs it in one
# process.
PYTEST_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder

# torch is pinned to the wheels this project is developed with (CUDA builds that run on the CPU, served from the
# local wheel cache here); elsewhere override, e.g. `make demo TORCH_SPEC="torch torchvision"`.
ifeq ($(shell uname -m),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif

.PHONY: demo test docs venv system-deps clean

demo: venv system-deps
	$(VENV)/bin/scanflow supervise --demo

test: venv system-deps
	@bash infra/system-deps.sh $(TEST_DEB_PACKAGES)
	$(PY) -m pytest $(PYTEST_ARGS)

# The documentation site (user guide, API reference from docstrings, decision records) into site/.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

system-deps:
	@bash infra/system-deps.sh $(DEB_PACKAGES)

clean:
	rm -rf $(VENV) mlflow.db mlartifacts stream corruptions.png .pytest_cache
