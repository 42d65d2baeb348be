#!/usr/bin/env bash
# Runs every test: gtest units (no model), model golden tests (SmolLM2),
# end-to-end tests against the real server (OpenAI API, CLI, cartridge tiers),
# then prints the cartridge tier report. CUDA code was compiled by the build
# when nvcc is present; it runs only on the GPU machine (scripts/gpu_run.sh).
set -uo pipefail
BUILD="${1:-build}"
cd "$(dirname "$0")/.."
export CARTSERVE_TIER_REPORT="$PWD/$BUILD/tier_report.jsonl"
rm -f "$CARTSERVE_TIER_REPORT"
ctest --test-dir "$BUILD" --output-on-failure -j "$(nproc)" --timeout 1800
rc=$?
.venv/bin/python tests/e2e/tier_report.py
exit $rc
