#!/usr/bin/env bash
# Runs every test: gtest units (no model), model golden tests (SmolLM2),
# end-to-end tests against the real server. CUDA code was compiled by the
# build when nvcc is present; it runs only on the GPU machine (scripts/gpu_run.sh).
set -euo pipefail
BUILD="${1:-build}"
cd "$(dirname "$0")/.."
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" --timeout 1800
