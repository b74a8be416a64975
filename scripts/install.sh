#!/usr/bin/env bash
# Install diffeval into the active Python environment.
#   bash scripts/install.sh          # the package
#   bash scripts/install.sh test     # the package and what the tests need
# torch: an existing install is kept (GPU users bring their own CUDA build). Where none is
# installed and no NVIDIA driver is present, torch 2.13.0 is pinned: on CPU machines that pin
# resolves to the CPU build, where an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
extra="${1:-}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "install: NVIDIA driver found; torch will come from the normal resolver (CUDA build)"
  else
    echo "install: no torch and no GPU: installing torch==2.13.0 (CPU build)"
    "$PY" -m pip install --quiet "torch==2.13.0"
  fi
fi
spec="."
[ -n "$extra" ] && spec=".[$extra]"
"$PY" -m pip install --quiet -e "$spec"
# pyenv installs console scripts behind shims that need a rehash
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
echo "install: diffeval $("$PY" -c 'import diffeval; print(diffeval.__version__)') ready"
