#!/usr/bin/env bash
# The first window's commands as run (2026-12-04 03:01-03:08 UTC), logs beside it; bench.sh is the reusable script.
set -u
cd /work/main || exit 1
O=/tmp/b20/ot
log() { echo "=== $* ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))"; }
R="/work/venv-rosetta/bin/python benchmarks/original_train.py --hf $HOME/.cache/c2cjax/hf --rosetta /work/rosetta-src"
log orig_release_thp; GLIBC_TUNABLES=glibc.malloc.hugetlb=1 $R --json $O/orig_release_thp.json > $O/orig_release_thp.log 2>&1; echo rc=$?
log jax1; python3 benchmarks/train_step.py --shapes original --frameworks jax --steps 3 --warmup 1 --json $O/jax1.json > $O/jax1.log 2>&1; echo rc=$?
log orig_off_thp; GLIBC_TUNABLES=glibc.malloc.hugetlb=1 $R --anomaly off --json $O/orig_off_thp.json > $O/orig_off_thp.log 2>&1; echo rc=$?
log jax2; python3 benchmarks/train_step.py --shapes original --frameworks jax --steps 3 --warmup 1 --json $O/jax2.json > $O/jax2.log 2>&1; echo rc=$?
log orig_off_nothp; $R --anomaly off --json $O/orig_off_nothp.json > $O/orig_off_nothp.log 2>&1; echo rc=$?
log "all done"
