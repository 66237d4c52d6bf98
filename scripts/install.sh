#!/usr/bin/env bash
# Creates .venv and installs cpo with its test tools. torch goes in first, pinned, so that pip
# takes the CPU wheel where the machine has one and never pulls a multi-GB CUDA build through a
# bare `torch` requirement; where torch is already installed (e.g. a GPU cluster's build) it is kept.
# Extra arguments are extras to add, e.g. `bash scripts/install.sh bench deepspeed`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
pip_q() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  pip_q "torch==${CPO_TORCH_VERSION:-2.13.0}" || pip_q "torch>=2.3"
fi
extras="dev"
for e in "$@"; do extras="$extras,$e"; done
pip_q -e ".[$extras]"
echo "installed: $(.venv/bin/python -c 'import torch, transformers, lightning; print(f"torch {torch.__version__}, transformers {transformers.__version__}, lightning {lightning.__version__}")')"
