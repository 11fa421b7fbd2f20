# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the virtualenv in .venv and install everything first.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install clean-venv

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the CPU build of torch first, in its own step, so nothing pulls a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,nudity]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/erasekit demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

clean-venv:
	rm -rf $(VENV)
