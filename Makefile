# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[hw,sim,bench,dev,synth,serial]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/actpack demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/actpack bench codec
	$(VENV)/bin/actpack bench offload
	$(VENV)/bin/actpack bench rtl

clean:
	rm -rf $(VENV) build .pytest_cache .ruff_cache .hypothesis
