#!/usr/bin/env bash
# The paper's recipe on one GPU machine, from this checkout: install with CUDA JAX (the
# `cuda` extra), train the fuser (the `data` mesh axis spans every local GPU), then
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
$PY -m pip install -q -e ".[cuda]"
$PY -c "import jax; d = jax.devices(); assert d[0].platform == 'gpu', d; print(d)"
$PY -m c2cjax.train --config "$CONFIG" --config.workdir="$WORKDIR" \
  --config.mesh.data=-1 --config.mesh.fsdp=1 --config.mesh.tensor=1
$PY -m c2cjax.eval --config "$EVAL_CONFIG" --config.fusers="$WORKDIR/fuser" \
  --config.output_dir="$WORKDIR/eval"
