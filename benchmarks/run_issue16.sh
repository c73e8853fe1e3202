#!/usr/bin/env bash
# Issue 16's CPU measurements in one go, for an idle machine (~17 min on 2 cores): prints
# every figure the issue asks for and, at the end, the "RATIO" lines side by side.
#
#   benchmarks/run_issue16.sh [OUTDIR]      (default runs/issue16; one log per benchmark)
#
# Nothing else should run meanwhile: the load average is printed by each benchmark.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
out=${1:-runs/issue16}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
run() {  # name, timeout (s), command...
  local name=$1 limit=$2; shift 2
  echo "=== $name: $* ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1-3 /proc/loadavg))"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  grep -v -E "Warning|warn\(|^\s*$|Loading weights" "$out/$name.log" | tail -n 25
  echo "--- $name: exit $rc after $((SECONDS - t0)) s"
}
# 1. Training step, local pair: c2cjax vs eager PyTorch (goal: >= 1.5x throughput at <= its
#    peak memory).
run train_local 600 python3 benchmarks/train_step.py --shapes local --steps 5 --warmup 2 \
  --rounds 2 --json "$out/train_local.json"
# 2. The original code's shape (30 projectors, hidden 1024, ~417M params, 4 x 256, fp32):
#    goal <= 5.8 s/step and <= 5 GiB (the original: 11.56 s, 10.5 GiB).
run train_original 240 python3 benchmarks/train_step.py --shapes original --frameworks jax \
  --steps 3 --warmup 1 --json "$out/train_original.json"
# 3. The paper's shapes (Qwen3-0.6B <- Qwen2.5-0.5B, 4 x 256): c2cjax vs eager PyTorch.
run train_paper 330 python3 benchmarks/train_step.py --shapes paper --steps 2 --warmup 1 \
  --json "$out/train_paper.json"
# 4. C2C query, offline pair, paper fuser (30 pairs, gates open), 124-token chat prompt +
#    64 tokens (goal: >= 2x faster than the original code; its figure in c2c_query.ORIGINAL
#    is from another window: benchmarks/original_query.py measures it side by side), with
#    the receiver's params stacked (the default) and per layer (load_model(scan_layers=False)).
run latency_original 150 python3 benchmarks/c2c_latency.py --shapes original --prompt 124 \
  --answer 64 --reps 2
run latency_original_unscanned 150 python3 benchmarks/c2c_latency.py --shapes original \
  --prompt 124 --answer 64 --reps 2 --layout unscanned
# 5. Batch-1 decode vs the bandwidth floor (goal >= 80%), 42- and 124-token prompts.
run decode 150 python3 benchmarks/decode.py --batches 1 --prompt-tokens 0 124 \
  --layouts scanned unscanned --reps 2
# 6. C2C latency at the paper's shapes (receiver vs C2C vs T2T).
run latency_paper 150 python3 benchmarks/c2c_latency.py --shapes paper --prompt 124 \
  --answer 64 --reps 1
echo "=== summary ($(date -u +%H:%M:%S) UTC)"
grep -h "^RATIO" "$out"/*.log
