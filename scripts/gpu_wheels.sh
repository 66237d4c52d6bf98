#!/usr/bin/env bash
# Fills .whl/ with the wheels the GPU check (scripts/gpu_check.py) needs on a machine without network:
# CPython 3.12, manylinux x86_64. Run it on a machine with PyPI, in the repository root:
#
#     bash scripts/gpu_wheels.sh                       # everything (about 23 MB)
#     bash scripts/gpu_wheels.sh --device-transformers # keep the GPU machine's own transformers/hub/tokenizers
#
# then install them there (see the docstring of scripts/gpu_check.py):
#     python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#         && export PYTHONPATH=/tmp/site
#
# Versions are the ones the project is tested with (.venv). Binary wheels come from PyPI for the target
# platform; antlr4-python3-runtime and deepspeed ship only as source there and are built here as pure-Python
# wheels (DeepSpeed with DS_BUILD_OPS=0: no CUDA ops compiled; it JIT-builds one on first use, and ZeRO-2
# with torch's AdamW, which the project gives it, needs none).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=.whl
DEEPSPEED_VERSION=${DEEPSPEED_VERSION:-0.19.8}

# train.py: Hydra. TRL's CPOTrainer: trl, datasets and the two datasets needs that the machine lacks.
# DeepSpeed's pure-Python needs (the machine has ninja, msgpack, psutil, py-cpuinfo, nvidia-ml-py, einops).
PACKAGES=(
  hydra-core==1.3.8 omegaconf==2.3.1
  trl==1.16.0 datasets==5.0.1 dill==0.4.1 multiprocess==0.70.19
  hjson==3.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
)
# The project pins transformers<5 and huggingface-hub<1.0; the GPU machine may have newer ones.
PINNED_TRANSFORMERS=(transformers==4.57.6 huggingface-hub==0.36.2 tokenizers==0.22.2)

if [ "${1:-}" = "--device-transformers" ]; then
  PINNED_TRANSFORMERS=()
elif [ -n "${1:-}" ]; then
  echo "error: unknown option $1 (known: --device-transformers)" >&2
  exit 2
fi

mkdir -p "$DEST"
rm -f "$DEST"/*.whl  # one version of each: two would stop the whole install there

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${PACKAGES[@]}" "${PINNED_TRANSFORMERS[@]}"

"$PY" -m pip wheel -q --no-deps -w "$DEST" antlr4-python3-runtime==4.9.3
# --no-build-isolation: DeepSpeed's setup.py imports torch (the CPU build here is enough with DS_BUILD_OPS=0).
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "deepspeed==$DEEPSPEED_VERSION"

for whl in "$DEST"/antlr4*.whl "$DEST"/deepspeed*.whl; do
  case "$whl" in
    *-py3-none-any.whl) ;;
    *) echo "error: $whl is not a pure-Python wheel, so it would not install on the GPU machine" >&2; exit 1 ;;
  esac
done
ls -1 "$DEST"
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST (the device tool carries 64 MiB with the tree)"
