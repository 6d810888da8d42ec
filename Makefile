# muleteer: two commands on a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: venv demo test lint typecheck pytest docs docs-options clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	cd examples/demo && ../../$(BIN)/muleteer --ini demo.ini

lint: venv
	$(BIN)/ruff check src tests examples scripts
	$(BIN)/ruff format --check src tests examples scripts

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/python -m pytest -m "not nightly"

test: lint typecheck pytest

$(DOCS_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

# The user guide (docs/, mkdocs.yml), built into site/; any warning fails the build.
docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

docs-options: venv
	$(BIN)/python scripts/gen_options_doc.py > docs/options.md

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
