#!/usr/bin/env bash
# On the GPU machine: builds the kernels and the GPU tests (CUDA against the
# CPU reference on random data) and runs them; results under $OUT (or ./out).
# The machine lacks most -dev packages, hence CARTSERVE_GPU_ONLY.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCARTSERVE_GPU_ONLY=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 > "$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
cmake --build build-gpu -j "$(nproc)" --target gpu_tests > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
./build-gpu/tests/gpu_tests --gtest_output="json:$OUT/gpu_tests.json" 2>&1 | tee "$OUT/gpu_tests.log"
