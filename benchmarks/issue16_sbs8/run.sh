#!/usr/bin/env bash
# Issue 16: the C2C query at the original code's shape, c2cjax and the released code
# alternating, two rounds, on an idle machine (~8 min). This folder holds the logs of its
# run on 2026-12-02 (01:23-01:31 UTC); see benchmarks/RESULTS.md.
#
#   benchmarks/issue16_sbs8/run.sh [OUTDIR]
# ROSETTA_PY: python of a venv with the released code's requirements (torch 2.13.0,
# transformers 4.52.4); ROSETTA_SRC: its checkout (thu-nics/C2C at d03cc7b); HF_DIR: the
# offline pair as HF folders (benchmarks/original_query.py's --hf).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
out=${1:-runs/issue16_sbs}
if [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  echo "$out is not empty: choose a new folder (earlier logs are never overwritten)" >&2
  exit 2
fi
mkdir -p "$out"
py=${ROSETTA_PY:-/work/venv-rosetta/bin/python}
src=${ROSETTA_SRC:-/work/rosetta-src}
hf=${HF_DIR:-$HOME/.cache/c2cjax/hf}
log() { echo "=== $* ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"; }
ours() {  # layout, round
  python3 benchmarks/c2c_latency.py --shapes original --prompt 124 --answer 64 --reps 3 \
    --layout "$1" > "$out/c2cjax_$1_$2.log" 2>&1
  echo "rc=$?"
  grep -E "RATIO original: C2C query" "$out/c2cjax_$1_$2.log"
}
released() {  # name, round, extra flags...
  local name=$1 r=$2
  shift 2
  "$py" benchmarks/original_query.py --hf "$hf" --rosetta "$src" --reps 3 --answer 64 \
    --prompt 124 "$@" --json "$out/original_${name}_$r.json" > "$out/original_${name}_$r.log" 2>&1
  echo "rc=$?"
  grep ORIGINAL "$out/original_${name}_$r.log"
}
for r in 1 2; do
  log round "$r" c2cjax scanned; ours scanned "$r"
  log round "$r" released; released own "$r"
  log round "$r" c2cjax unscanned; ours unscanned "$r"
  log round "$r" released all-but-last; released abl "$r" --fuse all-but-last
done
log "all done"
