# Parley: `make run` starts a node, `make test` runs the whole suite.
# Both set up .venv and the web UI (npm ci, vite build) only when something changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
BLUETOOTH_STAMP := $(VENV)/.bluetooth-installed
# The Bluetooth extra builds against BlueZ's headers: `make test` installs it where they
# exist (CI installs libbluetooth-dev), so its import test runs there.
TEST_EXTRAS := $(if $(wildcard /usr/include/bluetooth/bluetooth.h),bluetooth)
WEBAPP_STAMP := webapp/node_modules/.package-lock.json
WEBAPP_SOURCES := $(shell find webapp/src webapp/index.html webapp/vite.config.* webapp/package.json -type f 2>/dev/null)
PYTEST_ARGS ?=
# The suite waits on sockets, processes and a browser far more than it computes (one
# worker keeps a core 60% busy): three workers take it from about 10:30 to under 5 min
# on 2 cores. Each worker has its own temp dirs, ports and lab namespaces (named by pid).
TEST_WORKERS ?= 3

.PHONY: run test setup webapp lint bench clean bluetooth

run: setup
	$(PY) run.py

test: setup $(TEST_EXTRAS)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)
	@# python-axolotl's own suite guards the protobuf backend our crypto depends on.
	PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python $(PY) -m pytest -q -p no:cacheprovider --pyargs axolotl.tests
	$(VENV)/bin/ruff check .

setup: $(STAMP) webapp

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Parley needs Python 3.11 or newer ($(PYTHON) is older)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) || \
		{ echo "Could not create $(VENV): on Debian/Ubuntu run 'apt-get install python3-venv'"; \
		  rm -rf $(VENV); exit 1; }

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $@

# Optional extra: Bluetooth meetups (PyBluez; needs libbluetooth-dev to build).
bluetooth: $(BLUETOOTH_STAMP)

$(BLUETOOTH_STAMP): requirements-bluetooth.txt | $(STAMP)
	@test -f /usr/include/bluetooth/bluetooth.h || \
		{ echo "PyBluez needs BlueZ's headers: on Debian/Ubuntu run 'apt-get install libbluetooth-dev'"; exit 1; }
	$(PY) -m pip install --quiet -r requirements-bluetooth.txt
	@touch $@

# The browser UI: npm ci when the lock file changed, vite build when sources changed.
webapp: webapp/dist/index.html

$(WEBAPP_STAMP): webapp/package-lock.json
	@command -v npm >/dev/null || { echo "The web UI needs Node.js 20.19+ and npm"; exit 1; }
	cd webapp && npm ci --no-audit --no-fund
	@touch $@

webapp/dist/index.html: $(WEBAPP_STAMP) $(WEBAPP_SOURCES)
	cd webapp && npm run build
	@touch $@

lint: setup
	$(VENV)/bin/ruff check .

# Every module of bench/ that runs as a script; tests/bench/test_quick.py runs each of
# them with --quick in `make test`, so a broken bench fails the suite.
BENCHES := $(sort $(basename $(notdir $(shell grep -l '^if __name__ == "__main__":' bench/*.py))))

bench: setup
	@for b in $(BENCHES); do echo "## bench.$$b"; $(PY) -m bench.$$b || exit 1; done

clean:
	rm -rf $(VENV) webapp/node_modules webapp/dist .pytest_cache .ruff_cache .hypothesis
