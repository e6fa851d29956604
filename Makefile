# Zero-Downtime Lab. Two commands: `make lab` (work) and `make test` (check everything).
# Set ZDLAB_PORT to move the embedded server off its default port (54320);
# set DATABASE_URL to use a server of your own instead (then none is started);
# set ZDLAB_LAB_PORT to move JupyterLab off 8888. No network at the venue: `make wheelhouse` before.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.zdlab-installed

# JupySQL sends usage telemetry by default; never from this kit.
export PLOOMBER_STATS_ENABLED := false

.PHONY: lab test test-extremes test-pg15 test-matrix docker-env setup setup-dev wheelhouse preflight db notebooks lint bench doctor reset stop clean

# -- installs (issue 17): the lab's packages for `make lab`, the test tools on top for `make test` --
# A wheelhouse (`make wheelhouse`, tools/wheelhouse.py) makes both work without a package index:
# ZDLAB_WHEELHOUSE=/path/to/it, or a ./wheelhouse folder in the kit, and pip uses only that folder.
WHEELHOUSE ?= $(or $(ZDLAB_WHEELHOUSE),$(wildcard wheelhouse))
DEV_STAMP  := $(VENV)/.zdlab-dev-installed

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@WHEELHOUSE="$(WHEELHOUSE)" $(PY) tools/pip_install.py requirements.txt --kit
	@touch $@

$(DEV_STAMP): $(STAMP) requirements-hub.txt requirements-dev.txt
	@WHEELHOUSE="$(WHEELHOUSE)" $(PY) tools/pip_install.py requirements-dev.txt
	@touch $@

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

# Every pinned package for Linux x86_64/aarch64 and macOS x86_64/arm64, CPython 3.11-3.13, into
# $(WHEELHOUSE_DIR): the instructor's command, run once with network (see docs/facilitator.md).
WHEELHOUSE_DIR ?= wheelhouse
wheelhouse:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) tools/wheelhouse.py --dest $(WHEELHOUSE_DIR)

# The evening before a workshop: one line to paste in the room's chat (zdlab/preflight.py).
preflight: setup
	@$(PY) -m zdlab preflight
# -- end of issue 17's installs --

# Start (or reuse) the embedded server; does nothing but check it when DATABASE_URL is set.
db: setup
	@$(PY) -m zdlab db start

lab: db
	$(PY) -m zdlab lab

test: setup-dev db
	$(PY) -m pytest

# Every verdict on any machine: the worked notebooks and the checkers with CPU hogs on every core,
# and with the demo tables at half and twice their size (tools/any_machine.py). CI runs it.
test-extremes: setup-dev db
	$(PY) tools/any_machine.py

# The same suite against Debian's PostgreSQL 15 (installed when missing, as root), used through
# DATABASE_URL as a server of one's own would be; its server is stopped afterwards.
# The six-learner room (tests/test_many_learners.py, all five notebooks for six learners at once,
# about 10 minutes) runs in `make test` only: on 15 every notebook still runs, twice, in
# tests/test_notebook_order.py, and CI's time is bounded.
test-pg15: setup-dev
	@$(PY) tools/pg15.py start >/dev/null
	@status=0; DATABASE_URL="$$($(PY) tools/pg15.py url)" $(PY) -m pytest --deselect tests/test_many_learners.py \
	  || status=$$?; \
	  $(PY) tools/pg15.py stop; exit $$status

# Both versions: the embedded PostgreSQL 18, then 15. -k: the second runs even if the first fails.
test-matrix:
	@$(MAKE) -k test test-pg15

notebooks: setup
	$(PY) tools/make_notebooks.py

lint: setup-dev
	$(VENV)/bin/ruff check zdlab tests tools conftest.py
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.github-workflows docs/examples/zdlab-migrations.yml

bench: db
	$(PY) tools/bench.py

doctor: setup
	$(PY) -m zdlab doctor

reset: setup
	$(PY) -m zdlab reset

stop: setup
	$(PY) -m zdlab db stop

# The Docker path's .env from .env.example, with a random database password; never overwrites.
docker-env:
	@if [ -e .env ]; then echo ".env exists; edit it by hand (see .env.example)"; else \
	  sed "s/^POSTGRES_PASSWORD=.*/POSTGRES_PASSWORD=$$(od -An -N16 -tx1 /dev/urandom | tr -d ' \\n')/" .env.example > .env && \
	  chmod 600 .env && echo "wrote .env with a random POSTGRES_PASSWORD; now: docker compose up"; fi

clean: stop
	rm -rf .zdlab
