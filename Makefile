# Two entry points for a fresh Debian machine (see README.md):
#   make run    set everything up, then open the app (the GUI; under Xvfb when there is no display)
#   make test   set everything up, then run the test suite
#   make demo   the headless codec demo (prints figures, writes A/B WAVs)
#   make bundle the desktop bundle (PyInstaller) + its smoke test
.PHONY: run demo test setup lint bench conformance clean bundle

VENV := .venv
PY := $(VENV)/bin/python

setup:
	@bash scripts/setup.sh

run: setup
	bash scripts/run_gui.sh

demo: setup
	$(VENV)/bin/focalchat demo

bundle: setup
	bash packaging/build.sh
	bash packaging/smoke_test.sh

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
