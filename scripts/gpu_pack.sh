#!/usr/bin/env bash
# Here (the build machine): builds what the GPU machine runs and packs it for
# the device tool's 64 MiB limit: stripped binaries + the three shared
# libraries the GPU machine lacks, as .gpu/bundle.txz (git-ignored), and the
# SmolLM2 GGUF split into .gpu/gguf.part-* (it travels over several calls).
#   scripts/gpu_pack.sh [BUILD]
set -euo pipefail
BUILD="${1:-build}"
cd "$(dirname "$0")/.."
ninja -C "$BUILD" cartserve gpu_tests dump_logits model_tests gpu_bench
rm -rf .gpu/stage && mkdir -p .gpu/stage/bin .gpu/stage/lib
for f in "$BUILD/bin/cartserve" "$BUILD/tests/gpu_tests" "$BUILD/tests/dump_logits" \
         "$BUILD/tests/model_tests" "$BUILD/bench/gpu_bench"; do
  strip -o ".gpu/stage/bin/$(basename "$f")" "$f"
done
for l in libcpp-httplib.so.0.11 libutf8proc.so.2 libspdlog.so.1.10; do
  cp -L "$(ldconfig -p | grep "$l " | head -1 | awk '{print $NF}')" .gpu/stage/lib/
done
git rev-parse HEAD > .gpu/stage/COMMIT
git diff --quiet HEAD || echo "dirty" >> .gpu/stage/COMMIT
# xz with a 64 MiB window: the five binaries carry the same CUDA fatbin, which a
# window that spans files stores once (~10 MiB instead of gzip's ~53 MiB).
rm -f .gpu/bundle.tgz
tar cf - -C .gpu/stage . | xz -T1 --lzma2=preset=6,dict=64MiB > .gpu/bundle.txz
rm -rf .gpu/stage
GGUF="${CARTSERVE_CACHE:-$HOME/.cache/cartserve}/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$GGUF" ] && [ ! -f .gpu/gguf.sha256 ]; then
  rm -f .gpu/gguf.part-*
  # Four parts of 24 MiB: two fit beside the tree (~13 MiB) in one call, or one
  # beside the tree and the bundle (~10 MiB).
  split -b 24M -d -a 1 "$GGUF" .gpu/gguf.part-
  sha256sum "$GGUF" | awk '{print $1}' > .gpu/gguf.sha256
fi
ls -la .gpu
