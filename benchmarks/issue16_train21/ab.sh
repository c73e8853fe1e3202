#!/bin/bash
# Alternating A/B of the JAX training step: a base worktree vs this checkout.
#   git worktree add /tmp/base 5499b93
#   bash benchmarks/issue16_train21/ab.sh /tmp/base original OUTDIR   # --steps 3
#   bash benchmarks/issue16_train21/ab.sh /tmp/base paper OUTDIR      # --steps 2
# Run from the repository root on an idle machine; the VM drifts ~15%, so
# only the alternating order makes base/new comparable.
set -euo pipefail
base=$1; shapes=$2; out=$3
[ -e "$out" ] && { echo "refusing to overwrite $out" >&2; exit 1; }
mkdir -p "$out"
steps=3; [ "$shapes" = paper ] && steps=2
here=$(pwd)
for r in 1 2; do
  for side in base new; do
    dir=$here; [ $side = base ] && dir=$base
    (cd "$dir" && python benchmarks/train_step.py --shapes "$shapes" --frameworks jax \
        --steps $steps --warmup 1) > "$out/${side}_$r.log" 2>&1
    echo "$side $r: $(grep -E '^ +jax ' "$out/${side}_$r.log" | tr '\n' ' ')"
  done
done
