# Developer commands. `make test` and `make demo` work on a fresh clone: they create .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml constraints.txt setup.py transforms/sources/postgres/_pgwire.c transforms/sources/postgres/_pqcopy.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==26.3
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m pipelines.demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench.coder
	$(PY) -m bench.postgres_cdc
	$(PY) -m bench.sinks
	$(PY) -m bench.files
	$(PY) -m bench.mysql_cdc

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo-out
