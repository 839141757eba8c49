# megazip: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench corpus clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) lint
	$(VENV)/bin/pytest -q

# the same without the tests marked slow
test-fast: $(STAMP) lint
	$(VENV)/bin/pytest -q -m "not slow"

demo: $(STAMP)
	$(PY) -m megazip.demo

# benchmark tables and plots (megazip bench); e.g. make bench BENCH_FLAGS='--device cuda'
CORPORA     ?= ../shared/corpora
BENCH_FLAGS ?=
bench: $(STAMP)
	$(VENV)/bin/megazip bench $(CORPORA)/canterbury --format md --out bench/results --plot $(BENCH_FLAGS)
	$(VENV)/bin/megazip bench $(CORPORA)/brotli_testdata --format md --out bench/results --plot $(BENCH_FLAGS)

corpus:
	$(PYTHON) bench/corpus.py build --out data/corpus

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
