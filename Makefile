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
	$(BIN)/python -m compileall -q src  # PYTHONDONTWRITEBYTECODE would recompile at every start
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

# `make bench`: uWSGI, gunicorn and muleteer side by side in one run (~20 min; nothing
# else should run on the machine meanwhile). uWSGI and gunicorn live in their own venv.
BENCH_VENV ?= .bench-venv
BENCH_RESULTS ?= bench/results
bench: venv
	test -x $(BENCH_VENV)/bin/uwsgi || ($(PYTHON) -m venv $(BENCH_VENV) && \
		$(BENCH_VENV)/bin/python -m pip install -q uwsgi gunicorn uwsgidecorators matplotlib)
	bash bench/ensure_tools.sh
	$(BIN)/python -m compileall -q src
	cd bench && BENCH_VENV=$(abspath $(BENCH_VENV)) BENCH_RESULTS=$(abspath $(BENCH_RESULTS)) \
		MULETEER_CMD="$(abspath $(BIN))/python -m muleteer" \
		HTTP_SERVERS=uwsgi,uwsgi-http11,gunicorn-sync,nginx-uwsgi,muleteer,nginx-muleteer \
		MULE_SERVERS=uwsgi,muleteer MEM_SERVERS=uwsgi,gunicorn-sync,muleteer \
		bash run_all.sh $(BENCH_ARGS)
	$(BENCH_VENV)/bin/python bench/report.py $(BENCH_RESULTS)/latest

clean:
	rm -rf $(VENV) .bench-venv build *.egg-info src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
