# The one entry point people and CI share. `make demo` and `make test` install what they need
# into .venv (CPU stack, pinned in requirements/cpu.lock) and then run.
PY          ?= python3.11
VENV        := .venv
BIN         := $(VENV)/bin
LOCK        := requirements/cpu.lock
STAMP       := $(VENV)/.installed
# torch 2.13.0+cpu is not on PyPI: these machines carry it in pip's find-links dir.
TORCH_LINKS ?= /opt/wheels
UV_FLAGS    := --python $(BIN)/python -f $(TORCH_LINKS) --index-strategy unsafe-best-match
PYTEST_ARGS ?=

.PHONY: demo test test-fast lint lock bench clean

$(STAMP): $(LOCK) requirements/overrides.txt requirements/excludes.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip sync $(UV_FLAGS) $(LOCK)
	$(BIN)/uv pip install $(UV_FLAGS) --no-deps -e .
	$(BIN)/python -m cluster.amx
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cluster run sweeps/smoke.yaml

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "unit" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cluster serve tests bench
	$(BIN)/ruff format --check cluster serve tests bench
	$(BIN)/mypy

lock:
	$(BIN)/uv pip compile requirements/cpu.in --python-version 3.11 \
	  --overrides requirements/overrides.txt --excludes requirements/excludes.txt \
	  -f $(TORCH_LINKS) --index-strategy unsafe-best-match -o $(LOCK)

bench: $(STAMP)
	$(BIN)/python bench/plan_latency.py

clean:
	rm -rf runs .pytest_cache
