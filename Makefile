# Two entry points for a fresh Debian machine (see README.md):
#   make run    set everything up, then run the app (for now: the headless codec demo)
#   make test   set everything up, then run the test suite
.PHONY: run test setup lint bench conformance clean

VENV := .venv
PY := $(VENV)/bin/python

setup:
	@bash scripts/setup.sh

run: setup
	$(VENV)/bin/focalchat demo

test: setup
	bash scripts/test.sh

lint: setup
	$(VENV)/bin/ruff check .

conformance: setup
	$(VENV)/bin/focalchat conformance $(or $(ROOT),../shared/conformance/focalcodec_stream_small)

bench: setup
	$(VENV)/bin/focalchat bench

clean:
	rm -rf out .pytest_cache
