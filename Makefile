PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-fast lint demo demo-ct install clean

# (Re)install when the venv is missing or the dependency files changed.
$(STAMP): pyproject.toml requirements/ci.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/ci.txt
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The whole suite (what CI runs), the line-length and import rules included.
test: lint
	$(PY) -m pytest -q tests

# The edit loop: everything but the tests marked slow (bundles, trainings, subprocesses).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(PY) -m ruff check .

demo: $(STAMP)
	$(PY) -m scripts.demo

demo-ct: $(STAMP)
	$(PY) -m scripts.demo_ct

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
