#!/usr/bin/env bash
# What `make bench` runs (make builds; this script builds nothing): the CPU
# model benchmark and the load generator against `cartserve serve` (fp32 and
# --dtype bfloat16 weights), the
# cartridge benchmark on a shipped document and a long one, plus the
# llama.cpp baselines (llama-bench, llama-server on the same GGUF) when
# CARTSERVE_LLAMA_CPP_DIR points at a llama.cpp build folder. Every repeat
# runs ours and the baseline back to back; bench/summarize.py folds the
# repeats into bench/results/<name>-<date>.json and prints the tables.
#
# Environment (all optional):
#   CARTSERVE_LLAMA_CPP_DIR  llama.cpp build folder holding bin/llama-bench and bin/llama-server
#   CARTSERVE_BENCH_MODEL    GGUF (default: the SmolLM2 test model from scripts/setup.sh)
#   BENCH_NAME               results file prefix (default: cpu-<N>core)
#   BENCH_REPEATS            repeats of every benchmark (default 3)
#   BENCH_THREADS            threads for every engine (default 0: each engine's default, all cores)
#   BENCH_CONCURRENCY        load levels (default 1,4,16)
#   BENCH_MAX_TOKENS         output tokens per request (default 64)
#   BENCH_SKIP_LOAD=1        only the model benchmark
#   BENCH_SKIP_CARTRIDGE=1   no cartridge benchmark
set -euo pipefail
BUILD="${1:-build}"
cd "$(dirname "$0")/.."

MODEL="${CARTSERVE_BENCH_MODEL:-${CARTSERVE_CACHE:-$HOME/.cache/cartserve}/models/SmolLM2-135M-Instruct.Q4_1.gguf}"
NAME="${BENCH_NAME:-cpu-$(nproc)core}"
REPEATS="${BENCH_REPEATS:-3}"
THREADS="${BENCH_THREADS:-0}"
CONCURRENCY="${BENCH_CONCURRENCY:-1,4,16}"
MAX_TOKENS="${BENCH_MAX_TOKENS:-64}"
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python

CARTSERVE="$BUILD/bin/cartserve"
MODEL_BENCH="$BUILD/bench/cpu_model_bench"
CART_BENCH="$BUILD/bench/cartridge_bench"
for f in "$CARTSERVE" "$MODEL_BENCH" "$CART_BENCH"; do
  [ -x "$f" ] || { echo "run_bench: $f not found; build first (make bench)" >&2; exit 1; }
done
[ -f "$MODEL" ] || { echo "run_bench: model $MODEL not found (scripts/setup.sh fetches it)" >&2; exit 1; }

LLAMA_BENCH="" LLAMA_SERVER=""
if [ -n "${CARTSERVE_LLAMA_CPP_DIR:-}" ]; then
  for d in "$CARTSERVE_LLAMA_CPP_DIR/bin" "$CARTSERVE_LLAMA_CPP_DIR"; do
    if [ -z "$LLAMA_BENCH" ] && [ -x "$d/llama-bench" ]; then LLAMA_BENCH="$d/llama-bench"; fi
    if [ -z "$LLAMA_SERVER" ] && [ -x "$d/llama-server" ]; then LLAMA_SERVER="$d/llama-server"; fi
  done
  [ -n "$LLAMA_BENCH$LLAMA_SERVER" ] ||
    { echo "run_bench: no llama-bench or llama-server under $CARTSERVE_LLAMA_CPP_DIR" >&2; exit 1; }
  echo "run_bench: baselines: ${LLAMA_BENCH:-no llama-bench}, ${LLAMA_SERVER:-no llama-server}"
else
  echo "run_bench: CARTSERVE_LLAMA_CPP_DIR not set: no llama.cpp baseline"
fi

RUNS="$(mktemp -d)"
trap 'rm -rf "$RUNS"' EXIT
for r in $(seq 1 "$REPEATS"); do
  echo "run_bench: repeat $r/$REPEATS: cpu_model_bench"
  args=("$MODEL" --out "$RUNS/model-$r.json" --threads "$THREADS")
  if [ -n "$LLAMA_BENCH" ]; then args+=(--llama-bench "$LLAMA_BENCH"); fi
  "$MODEL_BENCH" "${args[@]}"
  if [ "${BENCH_SKIP_LOAD:-0}" = 1 ]; then continue; fi
  common=(--model "$MODEL" --threads "$THREADS" --concurrency "$CONCURRENCY"
          --max-tokens "$MAX_TOKENS" --seed 0)
  echo "run_bench: repeat $r/$REPEATS: load_gen against cartserve"
  "$PY" bench/load_gen.py --server cartserve --cartserve-bin "$CARTSERVE" "${common[@]}" \
    --server-log "$RUNS/cartserve-$r.log" --out "$RUNS/load-cartserve-$r.json"
  echo "run_bench: repeat $r/$REPEATS: load_gen against cartserve --dtype bfloat16"
  "$PY" bench/load_gen.py --server cartserve --label cartserve-bf16 --cartserve-bin "$CARTSERVE" \
    "${common[@]}" --server-arg=--dtype --server-arg=bfloat16 \
    --server-log "$RUNS/cartserve-bf16-$r.log" --out "$RUNS/load-cartserve-bf16-$r.json"
  if [ -n "$LLAMA_SERVER" ]; then
    echo "run_bench: repeat $r/$REPEATS: load_gen against llama-server"
    "$PY" bench/load_gen.py --server llama-server --llama-server "$LLAMA_SERVER" "${common[@]}" \
      --server-log "$RUNS/llama-server-$r.log" --out "$RUNS/load-llama-server-$r.json"
  fi
done
if [ "${BENCH_SKIP_CARTRIDGE:-0}" != 1 ]; then
  # A shipped document (~400 tokens) and a long one: the three documents, three
  # times over (~3,500 tokens), where the cartridge saves the most.
  for _ in 1 2 3; do cat data/documents/*.txt; done > "$RUNS/three_documents_x3.txt"
  for doc in data/documents/marrowick_island.txt "$RUNS/three_documents_x3.txt"; do
    echo "run_bench: cartridge_bench on $(basename "$doc")"
    "$CART_BENCH" "$MODEL" "$doc" --out "$RUNS/cartridge-$(basename "$doc" .txt).json"
  done
fi
"$PY" bench/summarize.py --name "$NAME" --out-dir bench/results "$RUNS"/*.json
