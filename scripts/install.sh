#!/usr/bin/env bash
# Create the virtual environment (if missing) and install gpf with its test extra.
# torch/torchvision are pinned to the build this machine carries on disk;
# pillow-simd replaces Pillow last, when it reads every format Pillow reads
# (see install_pillow_simd.sh); `gpf --version` then shows which PIL is active.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${GPF_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

if [ ! -x "$VENV/bin/python" ]; then
  echo "gpf setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip setuptools wheel
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  echo "gpf setup: installing $TORCH_SPEC"
  "$PY" -m pip install -q $TORCH_SPEC
fi
echo "gpf setup: installing gpf and its dependencies"
"$PY" -m pip install -q -e '.[test,plots]'
bash "$(dirname "$0")/install_pillow_simd.sh" "$PY" || true
"$VENV/bin/gpf" --version
