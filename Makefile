# Two commands on a fresh clone:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: venv demo demo-quick test test-all lint format bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

venv: $(VENV)/.installed

demo: venv            ## the main job: synthetic data -> train -> evaluate -> report
	$(VENV)/bin/kinetix demo --out demo_out

demo-quick: venv
	$(VENV)/bin/kinetix demo --quick --out demo_out

test: venv            ## the CI test suite (everything but @slow)
	$(PY) -m pytest

test-all: venv
	$(PY) -m pytest -m ""

lint: venv
	$(VENV)/bin/ruff check kinetix tests benchmarks
	$(VENV)/bin/ruff format --check kinetix tests benchmarks

format: venv
	$(VENV)/bin/ruff format kinetix tests benchmarks
	$(VENV)/bin/ruff check --fix kinetix tests benchmarks

clean:
	rm -rf $(VENV) demo_out .pytest_cache
