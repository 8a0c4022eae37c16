# The two commands of the README, each doing its own set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install scenarios test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The main job: every scenario against the reference queue, a report per run.
scenarios: install
	$(BIN)/pytest scenarios/ $(PYTEST_ARGS)

# The test suite: the harness and the reference queue themselves, then the scenarios.
test: install
	$(BIN)/pytest tests/ scenarios/ $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) reports/*/ .pytest_cache .hypothesis
