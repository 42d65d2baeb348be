#!/usr/bin/env bash
# Fetches reference data used by tests (never committed, never compiled):
# real tokenizer vocabularies (Llama 3 "llama-bpe", Qwen2, GPT-2, Llama 2
# SentencePiece "llama-spm") and model chat templates (Llama 3.x, Qwen2.5, Qwen3,
# Mistral-Nemo, Mistral-Small-3.2), taken from the llama-cpp-python
# source distribution on PyPI (pinned, checksum-verified) into
# $CARTSERVE_CACHE/ref (default ~/.cache/cartserve/ref).
set -euo pipefail
CACHE="${CARTSERVE_CACHE:-$HOME/.cache/cartserve}"
DEST="$CACHE/ref"
VERSION="0.3.36"
SHA256="$(cat "$(dirname "$0")/llama_cpp_python.sha256")"
STAMP="$DEST/.llama-cpp-python-$VERSION-3"  # -3: llama-spm, Qwen3 and Mistral-Small-3.2 templates
[ -f "$STAMP" ] && exit 0

echo "setup: fetching reference vocabularies and chat templates (llama-cpp-python==$VERSION sdist)"
mkdir -p "$DEST/vocab" "$DEST/templates" "$CACHE/wheels"
PY=python3
[ -x "$(dirname "$0")/../.venv/bin/python" ] && PY="$(dirname "$0")/../.venv/bin/python"
"$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
  "llama-cpp-python==$VERSION" -d "$CACHE/wheels"
SDIST="$CACHE/wheels/llama_cpp_python-$VERSION.tar.gz"
echo "$SHA256  $SDIST" | sha256sum -c --status || { echo "setup: checksum mismatch: $SDIST" >&2; exit 1; }
PREFIX="llama_cpp_python-$VERSION/vendor/llama.cpp/models"
tar -xzf "$SDIST" -C "$DEST/vocab" --strip-components=4 \
  "$PREFIX/ggml-vocab-llama-bpe.gguf" "$PREFIX/ggml-vocab-qwen2.gguf" "$PREFIX/ggml-vocab-gpt-2.gguf" \
  "$PREFIX/ggml-vocab-llama-spm.gguf"
tar -xzf "$SDIST" -C "$DEST/templates" --strip-components=5 \
  "$PREFIX/templates/meta-llama-Llama-3.1-8B-Instruct.jinja" \
  "$PREFIX/templates/meta-llama-Llama-3.2-3B-Instruct.jinja" \
  "$PREFIX/templates/meta-llama-Llama-3.3-70B-Instruct.jinja" \
  "$PREFIX/templates/Qwen-Qwen2.5-7B-Instruct.jinja" \
  "$PREFIX/templates/Qwen-Qwen3-0.6B.jinja" \
  "$PREFIX/templates/Mistral-Small-3.2-24B-Instruct-2506.jinja" \
  "$PREFIX/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja"
touch "$STAMP"
