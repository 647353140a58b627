# hpasc — two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The lock files decide every installed version; pyproject.toml keeps ranges. `make lock` rewrites
# them (constraints.txt holds the torch pin: the release on the local disk).
LOCK := requirements.lock
LOCK_ALL := requirements-all.lock
UV_PIN := uv==0.13.9
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-manylinux_2_28 -c constraints.txt --quiet

.PHONY: install test test-fast demo bench lint format clean lock

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==26.3
	$(BIN)/python -m pip install -q -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	@# Headless Chromium renders the HTML report in the tests (Debian package; needs root).
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "note: install Debian chromium for the report screenshot test (apt-get install chromium)"
	touch $(STAMP)

# requirements-all.lock: every extra (cellpose too); requirements.lock: the same versions, dev extra only.
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(UV_PIN)
	$(BIN)/uv pip compile pyproject.toml --all-extras $(LOCK_FLAGS) -o $(LOCK_ALL)
	$(BIN)/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -c $(LOCK_ALL) -o $(LOCK)

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

demo: install
	$(BIN)/hpasc demo

# scale table, projection, and crops/submission against the original (a few minutes on 2 cores);
# the per-topic benchmarks: python benchmarks/bench_<topic>.py; GPU: bash benchmarks/gpu.sh
bench: install
	PYTHONPATH=src $(BIN)/python benchmarks/scale.py

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info .pytest_cache
