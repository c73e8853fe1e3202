#!/usr/bin/env bash
# One command on a fresh machine: install, train the offline pair's fuser
# (SmolLM2-135M-Instruct receiver, Gemma-3-270M sharer, shipped instruction data),
# then compare C2C with the receiver alone on a short generation.
#   bash launch/local.sh                 # ~11 min of training on 2 idle CPU cores
#   VARIANT=short bash launch/local.sh   # a few minutes (smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/install.sh
PY=${PYTHON:-python3}
if [ "${VARIANT:-full}" = "short" ]; then
  CONFIG=configs/local.py:short; WORKDIR=runs/local_short
else
  CONFIG=configs/local.py; WORKDIR=runs/local
fi
$PY -m c2cjax.train --config "$CONFIG"
$PY -m c2cjax.demo --fuser "$WORKDIR/fuser"
