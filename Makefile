# The two entry points of the README: `make demo` (the main job) and `make test`.
VENV ?= .venv

.PHONY: setup demo test lint

setup:
	./scripts/setup.sh

demo: setup
	$(VENV)/bin/label-studio-decomp demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
