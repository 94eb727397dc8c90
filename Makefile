# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test bench clean

# The stamp file re-installs when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/rextransfer demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist worksteal  # one worker per core (pytest-xdist)

bench: $(VENV)/.installed
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) runs .pytest_cache
