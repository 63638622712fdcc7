PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The MONAI Deploy application's own environment (as a MAP has its own): the App SDK installed beside MONAI makes
# every `import monai` import Holoscan (MONAI loads its namespace's sub-packages, monai.deploy among them).
DEPLOY_VENV := .venv-deploy
DEPLOY_STAMP := $(DEPLOY_VENV)/.installed

.PHONY: test test-fast lint demo demo-ct install deploy-env clean

# (Re)install when the venv is missing or the dependency files changed.
$(STAMP): pyproject.toml requirements/ci.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/ci.txt
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

$(DEPLOY_STAMP): pyproject.toml requirements/ci.txt
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -r requirements/ci.txt
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -e ".[deploy]"
	touch $(DEPLOY_STAMP)

install: $(STAMP) $(DEPLOY_STAMP)

deploy-env: $(DEPLOY_STAMP)

# The whole suite (what CI runs), the line-length and import rules included.
test: lint $(DEPLOY_STAMP)
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
	rm -rf $(VENV) $(DEPLOY_VENV) .pytest_cache .hypothesis
