#!/usr/bin/env bash
# Installs everything cartserve needs on a fresh Debian/Ubuntu machine:
# system packages (C++ libraries from Debian), the Python test venv (.venv),
# and the test/demo model. Idempotent: a second run does almost nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake ninja-build pkg-config unzip clang
      nlohmann-json3-dev libcpp-httplib-dev libpcre2-dev libcli11-dev libspdlog-dev libfmt-dev
      libopenblas-dev libxxhash-dev libsqlite3-dev libssl-dev libbrotli-dev libutf8proc-dev
      libgtest-dev libgmock-dev libbenchmark-dev
      python3 python3-venv python3-pip)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ] || ! cmp -s tools/requirements-test.txt .venv/.requirements; then
  echo "setup: creating the Python test environment in .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tools/requirements-test.txt
  cp tools/requirements-test.txt .venv/.requirements
fi

scripts/fetch_model.sh
scripts/fetch_refs.sh
