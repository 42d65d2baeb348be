#!/usr/bin/env bash
# The main job: runs cartserve on the test model (SmolLM2-135M-Instruct).
set -euo pipefail
BUILD="${1:-build}"
cd "$(dirname "$0")/.."
MODEL="${CARTSERVE_CACHE:-$HOME/.cache/cartserve}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
"$BUILD/bin/cartserve" generate "$MODEL" --prompt "What is the capital of France?" --max-tokens 64
