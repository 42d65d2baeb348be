#!/usr/bin/env bash
# The GPU check, on the GPU machine, in stages that fit the device tool's
# calls (each at most 10 minutes; the machine stays warm between calls that
# follow each other, and /tmp survives while it does):
#   scripts/gpu_run.sh STAGE...
# Stages:
#   unit       the CUDA op tests (ctest label gpu: ops, attention, sampling vs the CPU; tensor
#              parallel on one GPU vs TP=1, and over NCCL when 2+ GPUs are visible)
#   unit:side  the shared-prefix tests with CARTSERVE_CASCADE_SIDE_STREAM=1
#   unit@VAR=VAL,VAR=VAL:FILTER  the op tests matching the gtest FILTER with those variables set
#   sanitizer  compute-sanitizer memcheck over the op tests and a whole forward pass
#   logits     (logits:NAME for one shape) random-weight Llama-3.2-3B and SmolLM2-135M shapes written by HF
#              transformers: our logits and greedy continuations against HF's
#   bench      bench/gpu_bench on the 3B shape (linear layers gemv vs cuBLASLt, decode,
#              decode over a shared 2048-token cartridge with and without shared-prefix
#              attention, prefill, cartridge TTFT, promotion)
#   bench:skinny  decode on the 3B shape with CARTSERVE_SKINNY=1 (decode rows through the
#              batch-invariant skinny kernel): gpu_bench_skinny.json
#   bench:gemv  decode on the 3B shape with CARTSERVE_DECODE_GEMV=1 (1-row decode runs through
#              gemv): gpu_bench_gemv.json
#   bench:tp2  (2+ GPUs) decode at batch 1, 64 and 256 on the 3B shape at TP=1 and TP=2
#              (one rank per GPU, NCCL): gpu_bench_tp1.json, gpu_bench_tp2.json
#   bench:cart decode over a shared 2048-token cartridge with and without shared-prefix
#              attention on the 3B shape: gpu_bench_cart.json
#   bench:smollm2   decode at batch 1 and 64 on the SmolLM2-135M shape, with the batch-1 budget
#              (its linear layers and other ops timed alone): gpu_bench_smollm2.json
#   bench:tune decode and cartridge TTFT on the 3B shape with CARTSERVE_GEMM_TUNE=1 (cuBLASLt
#              candidates and their split-K forms timed per shape): gpu_bench_tune*.json
#   bench:fixed decode on the 3B shape with CARTSERVE_GEMM_FIXED=1 (one cuBLASLt configuration
#              per weight shape for decode runs of 1-64 rows): gpu_bench_fixed.json
#   bench:direct cartridge TTFT on the 3B shape with CARTSERVE_KV_LOAD_DIRECT=1 (promotions
#              read page-locked host memory in place): gpu_bench_direct.json
#   bench:GROUP one gpu_bench group on the 3B shape (decode, decode1, prefill, ttft, transfer,
#              linear, ops, attention, sampling): gpu_bench_GROUP.json
#   bench@VAR=VAL,VAR=VAL:GROUP  one gpu_bench group with those variables set:
#              gpu_bench_GROUP_vars.json
#   logits@VAR=VAL,VAR=VAL:NAME  the logits of one shape with those variables set:
#              logits_NAME_vars.json (e.g. logits@CARTSERVE_PERSISTENT_DECODE=1:smollm2)
#   smollm2@VAR=VAL,VAR=VAL  the smollm2 stage with those variables set (servers and tools
#              inherit them): smollm2_golden_vars.json, tiers_vars.jsonl
#   logits:tp2 (2+ GPUs) the 3B checkpoint through TP=2 (NCCL) against HF (logits_tp2_llama3b.json)
#              and against TP=1 (logits_tp2_vs_tp1.json: bf16 tolerance, greedy agreement)
#   smollm2:tp2 (2+ GPUs) the smollm2 stage's validation tiers with the servers at
#              --tensor-parallel-size 2 (tiers_tp2.jsonl)
#   persistent the persistent decode kernel (CARTSERVE_PERSISTENT_DECODE=1): its tests, then
#              under memcheck (every command under `timeout`: a barrier that never opens
#              hangs), then decode at batch 1 on the SmolLM2 shape, per-op and persistent
#              with CARTSERVE_PERSISTENT_PREFETCH_KB 64, 0, 256 and CARTSERVE_PERSISTENT_CTAS
#              32, 66: gpu_bench_decode1_smollm2[_persistent_*].json, each persistent one with
#              where its step went by phase (persistent_timeline_b1)
#   persistent:3b  the same decode benchmarks on the 3B shape (prefetch 64, 0, 256):
#              gpu_bench_decode1_llama3b[_persistent_*].json (a call of its own: ~5 minutes)
#   pdl        with CARTSERVE_PDL=1 (programmatic dependent launch): the op tests, then decode
#              and the linear layers on the 3B shape: gpu_bench_pdl.json
#   profile    per-kernel GPU time of decode at batch 1 on the 3B shape (nsys, graph nodes
#              traced): decode_kernels*.csv
#   baseline   HF transformers eager and static cache + torch.compile on the same weights
#              (baseline:PARTS for some of eager,decode,prefill,ttft)
#   smollm2    the real SmolLM2 GGUF: greedy text vs the CPU build on the golden
#              prompts, the cartridge canary, validation tiers 0-5, R, A with --device cuda
#   serve      bench/load_gen.py against cartserve serve --device cuda on the 3B shape at
#              concurrency 1, 16, 64, 256 (64 output tokens, prompts of 32-256 words), without
#              and with every request naming a shared 2048-token cartridge (the one the bench
#              stage writes): serve_plain.json, serve_cartridge.json. --logprobs: the random
#              checkpoint's tokenizer (the tiny-llama fixture's, 317 tokens) gives most of
#              its 128k ids no text, so a token's chunk is told by its logprob
#   serve:cascade  the serve stage's cartridge half with shared-prefix attention on and off
#              (--cascade-min-prefix 0): serve_cartridge.json, serve_cartridge_no_cascade.json
#   soak       bench/soak/soak.py with the real SmolLM2 GGUF on --device cuda: 10,000 chat
#              requests at concurrency 64 over 100 cartridges, residency churning: soak.json
# Inputs (built here by scripts/gpu_pack.sh, carried as .gpu/*): bundle.txz (binaries +
# 3 libraries, ~10 MiB) and gguf.part-N (the GGUF in 4 parts of 24 MiB; the device tool
# carries at most 64 MiB a call: the bundle and one part, or two parts). Results: $OUT (at most
# 8 files come back): stages.jsonl, run.log, and one JSON per stage; here,
# tools/gpu/fold_results.py folds them into bench/results/gpu-*.json and
# bench/target_table.py prints issue 11's table from that.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
G=/tmp/cartserve-gpu
mkdir -p "$G"
if [ -f .gpu/bundle.txz ]; then  # Python's tarfile: xz may be missing there
  rm -rf "$G/bin" "$G/lib"
  python3 - .gpu/bundle.txz "$G" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    try:
        t.extractall(sys.argv[2], filter="data")
    except TypeError:  # Python without extraction filters
        t.extractall(sys.argv[2])
PY
fi
for p in .gpu/gguf.part-* .gpu/gguf.sha256; do
  if [ -f "$p" ]; then cp "$p" "$G/"; fi
done
GGUF="$G/smollm2.gguf"
if [ ! -f "$GGUF" ] && [ -f "$G/gguf.sha256" ] && [ -f "$G/gguf.part-3" ]; then
  cat "$G"/gguf.part-? > "$GGUF"
  if [ "$(sha256sum "$GGUF" | awk '{print $1}')" != "$(cat "$G/gguf.sha256")" ]; then
    echo "GGUF checksum mismatch" >&2
    rm -f "$GGUF"
  fi
fi
export LD_LIBRARY_PATH="$G/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
B="$G/bin"
export CARTSERVE_SOURCE_DIR="$PWD" CARTSERVE_NO_PROGRESS=1 PYTHONUNBUFFERED=1
echo "bundle: $(cat "$G/COMMIT" 2>/dev/null | tr '\n' ' ') tree: $(git rev-parse HEAD 2>/dev/null)" |
  tee -a "$OUT/run.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/run.log"

stage() {  # stage NAME CMD...: runs, logs, records rc and time
  local name=$1
  shift
  local t0=$SECONDS
  echo "== $name: $*" >> "$OUT/run.log"
  "$@" >> "$OUT/run.log" 2>&1
  local rc=$?
  echo "{\"stage\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - t0))}" | tee -a "$OUT/stages.jsonl"
  return $rc
}

ckpt() {  # ckpt NAME: the random checkpoint of that shape (written once per machine)
  [ -f "/tmp/ckpt/$1/prompts.json" ] || python3 tools/gpu/hf_reference.py make "$1" "/tmp/ckpt/$1"
}

logits() {  # logits NAME [TP]: our logits and greedy continuations against HF's
  local tp=${2:-1} dir="/tmp/ours/$1_tp${2:-1}${SUFFIX:-}"
  ckpt "$1" || return 1
  rm -rf "$dir" && mkdir -p "$dir"
  "$B/dump_logits" "/tmp/ckpt/$1" "/tmp/ckpt/$1/prompts.json" "$dir" --device cuda \
    --greedy 64 --tp "$tp" || return 1
  local name="logits_$1${SUFFIX:-}.json"
  [ "$tp" = 1 ] || name="logits_tp${tp}_$1${SUFFIX:-}.json"
  python3 tools/gpu/hf_reference.py compare "/tmp/ckpt/$1" "$dir" "$OUT/$name"
}

logits_tp2() {  # the 3B checkpoint at TP=2 against HF and against TP=1
  local rc=0
  logits llama3b 2 || rc=1
  [ -f /tmp/ours/llama3b_tp1/greedy.json ] || logits llama3b 1 || rc=1
  python3 tools/gpu/compare_dumps.py /tmp/ckpt/llama3b/prompts.json /tmp/ours/llama3b_tp2 \
    /tmp/ours/llama3b_tp1 "$OUT/logits_tp2_vs_tp1.json" || rc=1
  return $rc
}

profile() {
  local nsys
  nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys \
    2>/dev/null | head -1)
  [ -n "$nsys" ] || { echo "no nsys on this machine"; return 1; }
  "$nsys" profile --force-overwrite true --cuda-graph-trace=node -t cuda -o /tmp/prof \
    "$B/gpu_bench" /tmp/ckpt/llama3b --only decode1 --repeats 5 --out /tmp/prof.json || return 1
  "$nsys" stats -q -r cuda_gpu_kern_sum -f csv -o "$OUT/decode_kernels" /tmp/prof.nsys-rep
}

persistent_bench() {  # persistent_bench NAME: decode at batch 1, per-op, then persistent at 3 prefetches
  ckpt "$1" || return 1
  stage "bench_decode1_$1" timeout 240 "$B/gpu_bench" "/tmp/ckpt/$1" --only decode1 \
    --out "$OUT/gpu_bench_decode1_$1.json" || return 1
  local v
  for v in 64 0 256; do  # (with the per-phase timeline: persistent_timeline_b1)
    CARTSERVE_PERSISTENT_DECODE=1 CARTSERVE_PERSISTENT_PREFETCH_KB=$v CARTSERVE_PERSISTENT_TIMELINE=1 \
      stage "bench_decode1_$1_persistent_$v" timeout 240 "$B/gpu_bench" "/tmp/ckpt/$1" \
      --only decode1 --out "$OUT/gpu_bench_decode1_$1_persistent_$v.json" || return 1
  done
  [ "$1" = smollm2 ] || return 0
  for v in 32 66; do  # fewer CTAs: cheaper barriers for a small model
    CARTSERVE_PERSISTENT_DECODE=1 CARTSERVE_PERSISTENT_CTAS=$v CARTSERVE_PERSISTENT_TIMELINE=1 \
      stage "bench_decode1_$1_persistent_ctas_$v" timeout 240 "$B/gpu_bench" "/tmp/ckpt/$1" \
      --only decode1 --out "$OUT/gpu_bench_decode1_$1_persistent_ctas_$v.json" || return 1
  done
}

serve() {  # serve LABEL [CARTRIDGE_ID [SERVER_ARG...]]
  local cart=/tmp/cartserve_gpu_bench_cartridge.safetensors
  local args=(--server cartserve --cartserve-bin "$B/cartserve" --model /tmp/ckpt/llama3b
    --label "$1" --max-model-len 4096 --concurrency 1,16,64,256 --max-tokens 64 --logprobs
    --max-prompt-words 256 --server-log "/tmp/serve_$1.log" --out "$OUT/serve_$1.json"
    --server-arg=--device --server-arg=cuda)  # load_gen sets --max-num-seqs to the top level
  if [ -n "${2:-}" ]; then
    [ -f "$cart" ] || { echo "no $cart (the bench stage writes it)"; return 1; }
    args+=(--cartridge-id "$2" --server-arg=--kv-transfer-config --server-arg="{\"kv_connector\": \
\"CartridgeConnector\", \"kv_connector_extra_config\": {\"cartridges\": [{\"cartridge_id\": \
\"$2\", \"path\": \"$cart\"}]}}")
    for a in "${@:3}"; do args+=(--server-arg="$a"); done
  fi
  python3 bench/load_gen.py "${args[@]}"
  local rc=$?
  tail -n 5 "/tmp/serve_$1.log"
  return $rc
}

smollm2() {  # smollm2 [TIER_REPORT]: greedy text, canary and tiers on the real GGUF
  local report="${1:-$OUT/tiers.jsonl}"
  [ -f "$GGUF" ] || { echo "no GGUF (carry .gpu/gguf.part-0..3 and gguf.sha256, two parts a call)"; return 1; }
  local rc=0
  rm -rf /tmp/ours/golden && mkdir -p /tmp/ours/golden
  "$B/dump_logits" "$GGUF" tests/fixtures/model/smollm2_golden.json /tmp/ours/golden \
    --device cuda --greedy 64 || rc=1
  python3 tools/gpu/golden_greedy.py tests/fixtures/model/smollm2_golden.json \
    /tmp/ours/golden "$OUT/smollm2_golden${SUFFIX:-}.json" || rc=1
  CARTSERVE_TEST_DEVICE=cuda CARTSERVE_TEST_MODEL="$GGUF" "$B/model_tests" \
    --gtest_filter='*Canary*:*AcrossDevices*' || rc=1
  CARTSERVE_TEST_DEVICE=cuda CARTSERVE_TEST_MODEL="$GGUF" CARTSERVE_BIN="$B/cartserve" \
    CARTSERVE_TIER_REPORT="$report" python3 -m pytest -x -q tests/e2e/test_cartridge_tiers.py ||
    rc=1
  CARTSERVE_TIER_REPORT="$report" python3 tests/e2e/tier_report.py
  return $rc
}

for s in "$@"; do
  case "$s" in
    unit) stage unit "$B/gpu_tests" ;;
    unit:side) CARTSERVE_CASCADE_SIDE_STREAM=1 stage unit_side "$B/gpu_tests" \
                 --gtest_filter='*Cascade*' ;;
    unit@*) # unit@VAR=VAL,VAR=VAL:FILTER
      spec=${s#unit@}; vars=${spec%%:*}; filter=${spec#*:}
      name="unit_$(echo "$vars" | tr -c 'A-Za-z0-9\n' _ | tr A-Z a-z | sed 's/cartserve_//g')"
      (IFS=, && export $vars && stage "$name" "$B/gpu_tests" --gtest_filter="$filter") ;;
    sanitizer)
      stage sanitizer compute-sanitizer --tool memcheck --error-exitcode 9 "$B/gpu_tests" \
        --gtest_filter='CudaOps.*:PagedAttention*Decode*:*PrefillSharedCartridgePrefix:CudaSampling.Greedy*:CudaSampling.ChunkEdges:CudaSampling.Logprobs:CudaSampling.TemperatureOnly:CudaSampling.MinTokensMask:CudaSampling.DrawKernelOrSingleCtaSameResults:CudaSampling.TopPAllEqual:CudaBackendPrefetch.*:CudaTp.SumBf16*:CudaTp.OneDevice*:CudaCascade.*:CudaKvLoad.*:CudaBackendFold.*' &&
        ckpt smollm2 && stage sanitizer_forward compute-sanitizer --tool memcheck --error-exitcode 9 \
          "$B/dump_logits" /tmp/ckpt/smollm2 /tmp/ckpt/smollm2/prompts.json /tmp --device cuda \
          --greedy 4 ;;
    logits) stage logits_smollm2 logits smollm2; stage logits_llama3b logits llama3b ;;
    logits@*|smollm2@*) # logits@VAR=VAL,...:NAME, smollm2@VAR=VAL,...: with those variables
      spec=${s#*@}; vars=${spec%%:*}
      sfx="_$(echo "$vars" | tr -c 'A-Za-z0-9\n' _ | tr A-Z a-z | sed 's/cartserve_//g')"
      if [ "${s%%@*}" = logits ]; then
        (IFS=, && export $vars && SUFFIX=$sfx stage "logits_${spec#*:}$sfx" logits "${spec#*:}")
      else
        (IFS=, && export $vars && SUFFIX=$sfx stage "smollm2$sfx" smollm2 "$OUT/tiers$sfx.jsonl")
      fi ;;
    logits:tp2) stage logits_tp2 logits_tp2 ;;
    logits:*) stage "logits_${s#logits:}" logits "${s#logits:}" ;;
    bench) ckpt llama3b && stage bench "$B/gpu_bench" /tmp/ckpt/llama3b --out "$OUT/gpu_bench.json" ;;
    bench:skinny) ckpt llama3b && CARTSERVE_SKINNY=1 stage bench_skinny "$B/gpu_bench" \
                    /tmp/ckpt/llama3b --only decode --out "$OUT/gpu_bench_skinny.json" ;;
    bench:gemv) ckpt llama3b && CARTSERVE_DECODE_GEMV=1 stage bench_gemv "$B/gpu_bench" \
                  /tmp/ckpt/llama3b --only decode --out "$OUT/gpu_bench_gemv.json" ;;
    persistent)
      stage unit_persistent timeout 180 "$B/gpu_tests" --gtest_filter='CudaBackendPersistent.*' &&
        stage sanitizer_persistent timeout 300 compute-sanitizer --tool memcheck \
          --error-exitcode 9 "$B/gpu_tests" --gtest_filter='CudaBackendPersistent.*' &&
        persistent_bench smollm2 ;;
    persistent:3b) persistent_bench llama3b ;;
    pdl) CARTSERVE_PDL=1 stage unit_pdl "$B/gpu_tests" &&
           ckpt llama3b && CARTSERVE_PDL=1 stage bench_pdl "$B/gpu_bench" /tmp/ckpt/llama3b \
             --only decode --out "$OUT/gpu_bench_pdl.json" ;;
    bench:tp2) ckpt llama3b && stage bench_tp1 "$B/gpu_bench" /tmp/ckpt/llama3b --only decode \
                 --out "$OUT/gpu_bench_tp1.json" &&
                 stage bench_tp2 "$B/gpu_bench" /tmp/ckpt/llama3b --only decode --tp 2 \
                   --out "$OUT/gpu_bench_tp2.json" ;;
    bench:cart) ckpt llama3b && stage bench_cart "$B/gpu_bench" /tmp/ckpt/llama3b \
                  --only cartdecode --out "$OUT/gpu_bench_cart.json" ;;
    bench:smollm2) ckpt smollm2 && stage bench_smollm2 "$B/gpu_bench" /tmp/ckpt/smollm2 \
                     --only decode,linear,ops --out "$OUT/gpu_bench_smollm2.json" ;;
    bench:tune) ckpt llama3b && CARTSERVE_GEMM_TUNE=1 stage bench_tune "$B/gpu_bench" \
                  /tmp/ckpt/llama3b --only decode --out "$OUT/gpu_bench_tune.json" &&
                  CARTSERVE_GEMM_TUNE=1 stage bench_tune_ttft "$B/gpu_bench" /tmp/ckpt/llama3b \
                    --only ttft --out "$OUT/gpu_bench_tune_ttft.json" ;;
    bench:fixed) ckpt llama3b && CARTSERVE_GEMM_FIXED=1 stage bench_fixed "$B/gpu_bench" \
                   /tmp/ckpt/llama3b --only decode --out "$OUT/gpu_bench_fixed.json" ;;
    bench:direct) ckpt llama3b && CARTSERVE_KV_LOAD_DIRECT=1 stage bench_direct "$B/gpu_bench" \
                    /tmp/ckpt/llama3b --only ttft --out "$OUT/gpu_bench_direct.json" ;;
    bench@*) # bench@VAR=VAL,VAR=VAL:GROUP
      spec=${s#bench@}; vars=${spec%%:*}; group=${spec##*:}
      name="bench_${group}_$(echo "$vars" | tr -c 'A-Za-z0-9\n' _ | tr A-Z a-z | sed 's/cartserve_//g')"
      ckpt llama3b && (IFS=, && export $vars && stage "$name" "$B/gpu_bench" /tmp/ckpt/llama3b \
                         --only "$group" --out "$OUT/gpu_$name.json") ;;
    bench:*) ckpt llama3b && stage "bench_${s#bench:}" "$B/gpu_bench" /tmp/ckpt/llama3b \
               --only "${s#bench:}" --out "$OUT/gpu_bench_${s#bench:}.json" ;;
    profile) ckpt llama3b && stage profile profile ;;
    baseline) ckpt llama3b && stage baseline python3 tools/gpu/hf_reference.py baseline \
                /tmp/ckpt/llama3b "$OUT/hf_baseline.json" ;;
    baseline:*) ckpt llama3b && stage baseline python3 tools/gpu/hf_reference.py baseline \
                  /tmp/ckpt/llama3b "$OUT/hf_baseline_$(echo "${s#baseline:}" | tr , _).json" "${s#baseline:}" ;;
    smollm2) stage smollm2 smollm2 ;;
    smollm2:tp2) CARTSERVE_TEST_TP=2 stage smollm2_tp2 smollm2 "$OUT/tiers_tp2.jsonl" ;;
    serve) ckpt llama3b && stage serve_plain serve plain && stage serve_cartridge serve cartridge doc ;;
    serve:cascade) ckpt llama3b && stage serve_cartridge serve cartridge doc &&
                     stage serve_cartridge_no_cascade serve cartridge_no_cascade doc \
                       --cascade-min-prefix 0 ;;
    soak) stage soak python3 bench/soak/soak.py --bin "$B/cartserve" --model "$GGUF" --device cuda \
            --build-jobs 8 --kv-cache-memory 2GiB --out "$OUT/soak.json" ;;
    *) echo "unknown stage $s" ;;
  esac
done
tail -n 40 "$OUT/run.log"
