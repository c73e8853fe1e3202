#!/usr/bin/env bash
# The paper's recipe on a Cloud TPU VM slice (every worker runs the same program;
# jax.distributed is initialised from the TPU environment).
#   TPU=my-tpu ZONE=us-central2-b BUCKET=gs://my-bucket bash launch/tpu_vm.sh
set -euo pipefail
: "${TPU:?set TPU}" "${ZONE:?set ZONE}" "${BUCKET:?set BUCKET}"
REPO=${REPO:-https://github.com/c2cjax/c2cjax.git}
CONFIG=${CONFIG:-configs/qwen3.py}
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  [ -d c2cjax ] || git clone $REPO c2cjax
  cd c2cjax && git pull -q
  python3 -m pip install -q -e '.[tpu]'
  python3 -m c2cjax.train --config $CONFIG --config.workdir=$BUCKET/runs/\$(basename $CONFIG .py) \
    --config.mesh.data=-1 --config.mesh.fsdp=1 --config.mesh.tensor=1
"
