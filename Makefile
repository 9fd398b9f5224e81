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

TOOLS       := .venv-tools
GUIDELLM    ?= guidellm==0.8.1

.PHONY: demo test test-real test-cluster test-fast lint lock lock-gpu bench tools browser clean

$(STAMP): $(LOCK) requirements/overrides.txt requirements/excludes.txt requirements/excludes-data.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check uv==0.13.9
	# compiled once here: where PYTHONDONTWRITEBYTECODE=1 (these machines) Python would otherwise compile
	# vLLM, torch and transformers from source in every process (bench/engine_start.py)
	$(BIN)/uv pip sync --compile-bytecode $(UV_FLAGS) $(LOCK)
	$(BIN)/uv pip install $(UV_FLAGS) --no-deps -e .
	$(BIN)/python -m serve.compat
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cluster run sweeps/smoke.yaml

test: $(STAMP) browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-real: $(STAMP)
	$(BIN)/python -m pytest -m real $(PYTEST_ARGS)

test-cluster: $(STAMP)
	$(BIN)/python -m pytest -m cluster $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "unit" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check cluster serve tests bench
	$(BIN)/ruff format --check cluster serve tests bench
	$(BIN)/mypy

lock:
	$(BIN)/uv pip compile requirements/cpu.in --python-version 3.11 \
	  --overrides requirements/overrides.txt --excludes requirements/excludes.txt \
	  --excludes requirements/excludes-data.txt \
	  -f $(TORCH_LINKS) --index-strategy unsafe-best-match -o $(LOCK)

# The GPU image's lock (k8s/Dockerfile installs it with --require-hashes). Resolved for Linux x86_64 from
# PyPI alone: the find-links dir holds torch 2.13.0+cpu, which `torch==2.13.0` would also match.
lock-gpu:
	$(BIN)/uv pip compile requirements/gpu.in --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --overrides requirements/overrides.txt \
	  --excludes requirements/excludes-data.txt --generate-hashes -o requirements/gpu.lock

bench: $(STAMP)
	$(BIN)/python bench/plan_latency.py

# The report's browser test drives Debian's chromium + chromium-driver (browser downloads are impossible
# on these machines). Installed with apt-get when root (CI); otherwise that one test is skipped.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -q --no-install-recommends chromium chromium-driver \
	  || { apt-get update -q && apt-get install -y -q --no-install-recommends chromium chromium-driver; }; \
	else echo "note: chromium/chromedriver missing and not root: the report's browser test will be skipped"; fi

# Dev tools the benchmarks compare against, in their own venv so they never touch the project's pins
# (GuideLLM would otherwise pull a CUDA torch: pin the CPU wheel from the find-links dir).
tools: $(TOOLS)/bin/guidellm

$(TOOLS)/bin/guidellm: $(STAMP)
	$(BIN)/uv venv --python $(PY) $(TOOLS)
	$(BIN)/uv pip install --python $(TOOLS)/bin/python -f $(TORCH_LINKS) --index-strategy unsafe-best-match \
	  $(GUIDELLM) torch==2.13.0+cpu

clean:
	rm -rf runs .pytest_cache
