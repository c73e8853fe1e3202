#!/usr/bin/env bash
# Issue 16, nineteenth session: every CPU measurement of this machine kind in one idle run
# (~15 min): the HF folders for the released code, the local training step against PyTorch,
# the query side by side (../issue16_sbs8/run.sh), decode and prefill against transformers.
# This folder holds its logs of 2026-12-03 23:04-23:19 UTC (benchmarks/RESULTS.md).
#   benchmarks/issue16_sbs19/bench.sh OUTDIR    # a new, empty folder
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
o=${1:?usage: bench.sh OUTDIR (a new, empty folder)}
if [ -n "$(ls -A "$o" 2>/dev/null)" ]; then
  echo "$o is not empty: choose a new folder (earlier logs are never overwritten)" >&2
  exit 2
fi
mkdir -p "$o"
log() { echo "=== $* ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"; }
log export; python3 tests/fixtures/rosetta/export_hf.py > "$o"/export.log 2>&1; echo rc=$?
log train; python3 benchmarks/train_step.py --steps 6 --rounds 2 --json "$o"/train_local.json > "$o"/train_local.log 2>&1; echo rc=$?
grep RATIO "$o"/train_local.log
log sbs; bash benchmarks/issue16_sbs8/run.sh "$o/sbs"
log decode; python3 benchmarks/decode.py --batches 1 --prompt-tokens 42 124 --layouts scanned unscanned unscanned-bf16 > "$o"/decode.log 2>&1; echo rc=$?
grep RATIO "$o"/decode.log
log prefill; python3 benchmarks/prefill.py --rounds 3 > "$o"/prefill.log 2>&1; echo rc=$?
tail -5 "$o"/prefill.log
log "all done"
