# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0

.PHONY: install demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first (the pinned CPU wheel), then the project: an unpinned torch pulls CUDA.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test,docs,engines]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/incerta demo --out demo-output

# two workers, each taking whole test files (module fixtures are trained once)
test: install
	$(PY) -m pytest -n 2 --dist loadfile

clean:
	rm -rf demo-output runs .pytest_cache
