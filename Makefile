# One command per job. The figures read only results/ (regenerate a table with its experiment's
# command, e.g. `.venv/bin/python -m experiments.operator_shapes`, then `make figures`).
PYTHON ?= .venv/bin/python

.PHONY: figures test lint

figures:  ## execute every notebook in notebooks/ headless: results/ -> figures/ (PNG and PDF)
	$(PYTHON) scripts/figures.py

test:  ## the test suite (set-up included), as the README says
	bash scripts/test.sh

lint:  ## what CI checks before the tests
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
