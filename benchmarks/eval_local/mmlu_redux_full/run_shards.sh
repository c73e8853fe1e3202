#!/bin/bash
# MMLU-Redux, all 5,700 questions, on the offline pair, in 8 subject shards (each
# subject's questions in one shard), run one after the other. A finished shard is skipped,
# so the script resumes where a stopped run left off, also from the finished shards
# committed as parts/shard<i>.tar.gz (config, records, predictions). When all 8 are done
# their reports are merged into outputs/mmlu_full/merged/local. Needs runs/local/fuser
# (python -m c2cjax.train --config configs/local.py). 30-35 minutes a shard on 2 cores.
set -u
cd "$(dirname "$0")/../../.."
OUT=${OUT:-outputs/mmlu_full}
mkdir -p "$OUT"
SHARDS=$(python -c "
from c2cjax.evaluation import datasets
s = sorted({q.subject for q in datasets.load_benchmark('mmlu_redux')})
for i in range(8): print(tuple(s[i::8]))  # config tuples, as Python literals
")
i=0
parts=()
while read -r subjects; do
  dir=$OUT/shard$i
  parts+=("$dir/local")
  saved=benchmarks/eval_local/mmlu_redux_full/parts/shard$i.tar.gz  # committed, finished shards
  if [ ! -f "$dir/local/logits.json" ] && [ -f "$saved" ]; then
    mkdir -p "$dir" && tar -xzf "$saved" -C "$dir"
  fi
  if [ -f "$dir/local/logits.json" ]; then echo "shard $i: done"; i=$((i + 1)); continue; fi
  echo "$(date -u) shard $i: $subjects"
  python -m c2cjax.eval --config configs/eval_local.py --config.background_tokens=48 \
    --config.benchmarks=mmlu_redux --config.subjects="$subjects" --config.progress=False \
    --config.output_dir="$dir" > "$OUT/shard$i.log" 2>&1 || { echo "shard $i failed: $OUT/shard$i.log"; exit 1; }
  echo "$(date -u) shard $i: finished"
  i=$((i + 1))
done <<< "$SHARDS"
python -m c2cjax.eval --config configs/eval_local.py --config.output_dir="$OUT/merged" \
  --config.merge="($(printf "'%s', " "${parts[@]}"))"
