#!/usr/bin/env bash
# Two training processes (2 fake CPU devices each), configs/tiny.py, 40 steps, from the
# checkout ROOT; prints the median tokens/s of steps 6-40 (README.md beside this).
#   benchmarks/multiprocess24/mp_ab.sh ROOT NAME    # logs in ${MPAB:-/tmp/mpab}/NAME (new)
set -euo pipefail
root=$1
name=$2
base=${MPAB:-/tmp/mpab}
out=$base/$name
if [ -e "$out" ]; then echo "$out exists; choose a new NAME" >&2; exit 2; fi
mkdir -p "$out/reads"
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
for i in 0 1; do
  (cd "$root" && PYTHONPATH="$root" JAX_PLATFORMS=cpu \
     XLA_FLAGS=--xla_force_host_platform_device_count=2 \
     JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES=2 JAX_PROCESS_ID="$i" \
     python3 tests/multiprocess_worker.py "$out/w" "$base/tfds" "$out/reads" 40 1000 \
     > "$out/log$i.txt" 2>&1) &
done
wait
python3 - "$out/w/metrics.jsonl" "$name" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
t = [r["train/tokens_per_s"] for r in rows if "train/tokens_per_s" in r and r["step"] > 5]
print(sys.argv[2], len(t), "steps; median tokens/s", round(statistics.median(t)),
      "min", round(min(t)), "max", round(max(t)))
PY
