# Two entry points for a fresh machine: `make demo` (the pipeline on the embedded default model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[test,pipeline,lmms]'
	$(PY) -m pip install -q --no-deps -r requirements.txt
	touch $(STAMP)

demo: setup
	PATH=$(abspath $(VENV))/bin:$$PATH dvc --wait-for-lock repro
	@echo; $(VENV)/bin/tamp summary artifacts

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/bench_tamp.py --nsamples 16
