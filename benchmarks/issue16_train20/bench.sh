#!/usr/bin/env bash
# Issue 16, twentieth session: c2cjax's training step against the released code's own step
# (benchmarks/original_train.py, in the released code's venv) at the original code's shape,
# alternating, then against eager PyTorch at the local and paper shapes (~17 min, idle).
# Both sides run under the malloc tunable `python -m c2cjax.train` restarts with here
# (c2cjax.runtime.hugepage_env; train_step.py gives it to both of its frameworks).
# This folder holds its logs of 2026-12-04 (benchmarks/RESULTS.md, twentieth session).
#   benchmarks/issue16_train20/bench.sh OUTDIR    # a new, empty folder
#   ROSETTA_PY=/work/venv-rosetta/bin/python ROSETTA_SRC=/work/rosetta-src (the defaults)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
o=${1:?usage: bench.sh OUTDIR (a new, empty folder)}
if [ -n "$(ls -A "$o" 2>/dev/null)" ]; then
  echo "$o is not empty: choose a new folder (earlier logs are never overwritten)" >&2
  exit 2
fi
mkdir -p "$o"
py=${ROSETTA_PY:-/work/venv-rosetta/bin/python}
src=${ROSETTA_SRC:-/work/rosetta-src}
tun=$(python3 -c "from c2cjax import runtime; e = runtime.hugepage_env(); print(e['GLIBC_TUNABLES'] if e else '')" 2>/dev/null)
log() { echo "=== $* ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"; }
released() {  # $1: name, then original_train.py flags
  local n=$1; shift
  GLIBC_TUNABLES=${tun:-${GLIBC_TUNABLES:-}} "$py" benchmarks/original_train.py \
    --hf ~/.cache/c2cjax/hf --rosetta "$src" --json "$o/$n.json" "$@" > "$o/$n.log" 2>&1
  echo rc=$?; grep RATIO "$o/$n.log"
}
ours() {  # $1: name, then --original JSON files
  local n=$1; shift
  python3 benchmarks/train_step.py --shapes original --frameworks jax --steps 3 --warmup 1 \
    --json "$o/$n.json" --original "$@" > "$o/$n.log" 2>&1
  echo rc=$?; grep RATIO "$o/$n.log"
}
echo "GLIBC_TUNABLES for both sides: ${tun:-(none: hugepage_env says nothing to change)}"
log released, anomaly detection on as SFT_train sets it; released released_on
log c2cjax 1; ours c2cjax_1 "$o/released_on.json"
log released, anomaly detection off; released released_off --anomaly off
log c2cjax 2; ours c2cjax_2 "$o/released_on.json" "$o/released_off.json"
log local pair vs eager PyTorch
python3 benchmarks/train_step.py --steps 6 --rounds 2 --json "$o/local.json" > "$o/local.log" 2>&1
echo rc=$?; grep -E "RATIO|^round" "$o/local.log"
log paper shapes vs eager PyTorch
python3 benchmarks/train_step.py --shapes paper --steps 2 --warmup 1 --rounds 2 \
  --json "$o/paper.json" > "$o/paper.log" 2>&1
echo rc=$?; grep -E "RATIO|^round" "$o/paper.log"
log "all done"
