#!/usr/bin/env bash
# The paper's recipe on one GPU machine, from this checkout: install with CUDA JAX (the
# `cuda13` extra where the driver runs CUDA 13 or later, else `cuda`, CUDA 12; CUDA_EXTRA
# overrides), train the fuser (the `data` mesh axis spans every local GPU), then
# evaluate it. A rerun resumes training from the last checkpoint.
#   bash launch/gpu.sh
#   CONFIG=configs/qwen3.py EVAL_CONFIG=configs/eval_qwen3.py WORKDIR=runs/qwen3 bash launch/gpu.sh
# CONFIG / EVAL_CONFIG must name the same receiver and sharer (the defaults do).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
CONFIG=${CONFIG:-configs/qwen3.py}
EVAL_CONFIG=${EVAL_CONFIG:-configs/eval_qwen3.py}
name=${CONFIG##*/}; name=${name/.py:/-}; name=${name%.py}  # configs/pairs.py:x -> pairs-x
WORKDIR=${WORKDIR:-runs/$name}
if [ -z "${CUDA_EXTRA:-}" ]; then
  # the driver's CUDA version, from nvidia-smi's header ("CUDA Version: 13.0")
  driver_cuda=$({ nvidia-smi 2>/dev/null || true; } |
    sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n 1)
  if [ -z "$driver_cuda" ]; then
    echo "launch/gpu.sh: nvidia-smi found no NVIDIA driver; set CUDA_EXTRA=cuda or cuda13" >&2
    exit 2
  fi
  CUDA_EXTRA=cuda; [ "$driver_cuda" -ge 13 ] && CUDA_EXTRA=cuda13
fi
case "$CUDA_EXTRA" in
  cuda|cuda13) ;;
  *) echo "launch/gpu.sh: CUDA_EXTRA must be cuda (CUDA 12) or cuda13, got $CUDA_EXTRA" >&2
     exit 2 ;;
esac
$PY -m pip install -q -e ".[$CUDA_EXTRA]"
$PY -c "import jax; d = jax.devices(); assert d[0].platform == 'gpu', d; print(d)"
$PY -m c2cjax.train --config "$CONFIG" --config.workdir="$WORKDIR" \
  --config.mesh.data=-1 --config.mesh.fsdp=1 --config.mesh.tensor=1
$PY -m c2cjax.eval --config "$EVAL_CONFIG" --config.fusers="$WORKDIR/fuser" \
  --config.output_dir="$WORKDIR/eval"
