#!/usr/bin/env bash
# The paper's recipe on a Cloud TPU VM slice: every worker clones (or updates) your
# c2cjax repository, installs it with the `tpu` extra and runs the same training program;
# jax.distributed is initialised from the TPU environment, and each worker reads its own
# shard of every global batch.
#   REPO=<git URL your workers can clone> TPU=my-tpu ZONE=us-central2-b \
#     BUCKET=gs://my-bucket bash launch/tpu_vm.sh
# REPO is required (there is no default); REF (optional) checks out a branch, tag or
# commit; CONFIG defaults to configs/qwen3.py. Checkpoints and the fuser go to
# $BUCKET/runs/<config name>, so a rerun resumes from the last checkpoint.
set -euo pipefail
: "${REPO:?set REPO to the git URL of your c2cjax repository (anything git clone takes)}"
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
: "${BUCKET:?set BUCKET to a gs:// path for checkpoints}"
CONFIG=${CONFIG:-configs/qwen3.py}
REF=${REF:-}
name=${CONFIG##*/}; name=${name/.py:/-}; name=${name%.py}  # configs/pairs.py:x -> pairs-x
# Every value is quoted for the remote shell.
remote="set -e
[ -d c2cjax ] || git clone -q $(printf %q "$REPO") c2cjax
cd c2cjax
if [ -n $(printf %q "$REF") ]; then git fetch -q origin $(printf %q "$REF") && git checkout -q FETCH_HEAD
else git pull -q --ff-only; fi
python3 -m pip install -q -e '.[tpu]'
python3 -m c2cjax.train --config $(printf %q "$CONFIG") \
  --config.workdir=$(printf %q "$BUCKET/runs/$name") \
  --config.mesh.data=-1 --config.mesh.fsdp=1 --config.mesh.tensor=1"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$remote"
