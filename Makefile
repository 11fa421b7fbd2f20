# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the virtualenv in .venv and install everything first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-fast quality docs delta-ids install clean-venv

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first, in its own step, so nothing pulls a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	# then everything else at the tested versions (constraints.txt; pyproject.toml states the supported ranges)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,nudity]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/erasekit demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist worksteal --durations=25

# the development loop: everything but the tests marked slow (CI runs `make test`); both run one
# pytest-xdist worker per core
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist worksteal -m "not slow"

# lint (the rules are in pyproject.toml's [tool.ruff]); ruff is installed with the test extra
quality: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts

# regenerate what is written from code: the settings tables of docs/methods/*.md and the README's
# results summary (from the stored bench cells; loads the Shapes model, about a minute)
docs: $(STAMP)
	$(PY) tests/scripts/method_docs.py
	$(VENV)/bin/erasekit bench --report-only

# re-record every method's delta id (after a deliberate change of what a method computes)
delta-ids: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) tests/scripts/record_delta_ids.py

clean-venv:
	rm -rf $(VENV)
