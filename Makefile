# Zero-Downtime Lab. Two commands: `make lab` (work) and `make test` (check everything).
# Set ZDLAB_PORT to move the embedded server off its default port (54320);
# set DATABASE_URL to use a server of your own instead (then none is started).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.zdlab-installed

# JupySQL sends usage telemetry by default; never from this kit.
export PLOOMBER_STATS_ENABLED := false

.PHONY: lab test setup db notebooks lint bench doctor reset stop clean

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@touch $@

setup: $(STAMP)

# Start (or reuse) the embedded server; does nothing but check it when DATABASE_URL is set.
db: setup
	@$(PY) -m zdlab db start

lab: db
	$(PY) -m zdlab lab

test: db
	$(PY) -m pytest

notebooks: setup
	$(PY) tools/make_notebooks.py

lint: setup
	$(VENV)/bin/ruff check zdlab tests tools conftest.py
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

bench: db
	$(PY) -m zdlab.bench

doctor: setup
	$(PY) -m zdlab doctor

reset: setup
	$(PY) -m zdlab reset

stop: setup
	$(PY) -m zdlab db stop

clean: stop
	rm -rf .zdlab
