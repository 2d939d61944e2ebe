# gm: two commands. `make run` sets up and runs the quick pipeline; `make test` sets up and tests.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 5000

.PHONY: run test test-fast test-chaos ui ui-check browser bench setup data clean help profile server chaos

help:
	@echo "make run    - set up .venv, materialise data/, run the DVC pipeline (prepare, train, tune, evaluate, report)"
	@echo "make test   - set up .venv and run the test suite"
	@echo "make test-fast - the suite without Ray, MLflow server or DVC runs (minutes)"
	@echo "make test-chaos - the fault scenarios as tests (the slower tier CI runs after make test)"
	@echo "make ui     - serve the MLflow UI on http://127.0.0.1:$(PORT)"
	@echo "make ui-check - look at the MLflow UI and reports/index.html in headless Chromium (screenshots: reports/ui/)"
	@echo "make bench  - print per-stage and Ray Train overhead figures"
	@echo "make server - a team's MLflow tracking server on PostgreSQL, http://127.0.0.1:$(PORT) (ARGS=--auth ...)"
	@echo "make chaos  - inject faults (killed node, driver, server; corrupt files) and print what each cost"

setup: $(STAMP) browser

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Debian's chromium and chromedriver, for the tests and `make ui-check` that look at the UI in a real browser
# (gm/browser.py). Checked every time (two file tests) rather than trusted to a stamp: installed once, as root.
BROWSER_BINS := /usr/bin/chromium /usr/bin/chromedriver
browser:
	@if ! test -x /usr/bin/chromium || ! test -x /usr/bin/chromedriver; then \
	  if test "$$(id -u)" = 0 && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium and chromium-driver (apt-get)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null; \
	  else \
	    echo "error: $(BROWSER_BINS) missing, and this is not root with apt-get: as root run" >&2; \
	    echo "  apt-get install --no-install-recommends chromium chromium-driver   (then make setup again)" >&2; \
	    exit 1; \
	  fi; \
	fi
	@test -x /usr/bin/chromium && test -x /usr/bin/chromedriver

# data/ holds raw inputs only; when absent it is materialised byte for byte (same hash as data.dvc).
data: $(STAMP)
	$(BIN)/gm data init

run: data
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(BIN)/gm repro
	@echo
	@echo "Reports: reports/leaderboard.md, reports/index.html.  MLflow: make ui"

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=900 --durations=15 -m "not chaos and not journey" tests

# the slower tier: every fault scenario of `make chaos` as a test (killed driver, node and tracking server,
# two clones on one server, corrupt files) and the user journeys (README walk-through, gm models on a served
# model, the UI in a browser, the audio pipeline); CI runs it after make test
test-chaos: $(STAMP) browser
	$(BIN)/python -m pytest -q -p no:cacheprovider --timeout=1200 --durations=10 -m "chaos or journey" tests

# everything but the tests that start Ray or an MLflow server or run DVC (marked integration), on both cores;
# make test stays on one process: Ray's tests are slower beside a second worker than after it
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -n 2 --timeout=300 --durations=10 -m "not integration" tests

# a team's tracking server: PostgreSQL + MLflow with proxied artifacts (state in tracking-server/); then
# export MLFLOW_TRACKING_URI=http://127.0.0.1:$(PORT) in every clone that should log there
server: $(STAMP)
	$(BIN)/gm server --port $(PORT) $(ARGS)

# the fault-injection benchmark: a table of faults, what happened, and what was lost (python -m gm.chaos --help)
chaos: data
	$(BIN)/python -m gm.chaos $(ARGS)

ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlflow.db" --host 127.0.0.1 --port $(PORT)

# the UI in a real browser: make ui's server on a free port (ARGS=--port P), headless Chromium on the registered
# models, each champion version (alias, card) and its run's card/samples.png, and on reports/index.html;
# screenshots in reports/ui/, exit 1 with the list of what is missing
ui-check: $(STAMP) browser
	$(BIN)/python -m gm.browser $(ARGS)

bench: data
	$(BIN)/python -m gm.bench $(ARGS)

clean:
	rm -rf artifacts reports mlflow.db mlartifacts .dvc/tmp

# Another params profile (profiles/$(PROFILE).yaml) in its own workspace: make profile PROFILE=adversarial
# (ARGS=--keep-code resumes it with the code the workspace already has)
profile: $(STAMP)
	$(BIN)/python -m gm.profiles $(PROFILE) $(ARGS)
