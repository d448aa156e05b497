# replibook: the two commands are `make book` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Developers and CI read the local mirrors beside the checkout; users set their own.
export REPLIBOOK_DATA ?= $(abspath $(wildcard ../shared/data))
JOBS ?= 2
SIZE ?= small

.PHONY: setup book test unit smoke html chapter status lab clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[book,test]"
	touch $(STAMP)

## make book: execute stale chapters at `small`, regenerate the scoreboard, build _build/html
book: $(STAMP)
	$(VENV)/bin/replibook book --jobs 1

## make test: unit tests + nbmake smoke of every notebook + freshness checks, then the strict HTML build
test: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q tests notebooks --nbmake --nbmake-timeout=120
	$(VENV)/bin/replibook book --no-execute --strict

unit: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q tests

smoke: $(STAMP)
	$(PY) -m pytest -n $(JOBS) -q notebooks --nbmake --nbmake-timeout=120

html: $(STAMP)
	$(VENV)/bin/replibook book --no-execute

## make chapter SLUG=layer-norm SIZE=small
chapter: $(STAMP)
	$(VENV)/bin/replibook run $(SLUG) --size $(SIZE)

status: $(STAMP)
	$(VENV)/bin/replibook status

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

clean:
	rm -rf _build .pytest_cache
