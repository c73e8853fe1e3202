#!/usr/bin/env bash
# The released PyTorch code (thu-nics/C2C, package rosetta) on the same accelerator as
# device.sh's figures, at the paper's shapes: random Qwen3-0.6B <- Qwen2.5-0.5B-Instruct
# (benchmarks/paper_hf.py), the paper's fuser (C2C_0.6+0.5 recipe), bfloat16 as its
# training script's main runs it on GPUs. Measures, each into its own file under DIR:
#   release_train.json / .txt        its training step, batch 4 x 256, as released
#                                    (autograd anomaly detection on: SFT_train sets it)
#   release_train_noanomaly.json/.txt the same step with anomaly detection off
#   release_query.json / .txt        one batch-1 C2C query, 124 random ids + 64 tokens,
#                                    beside the receiver alone (transformers generate)
# and prints one line per figure. Runs after (never beside) device.sh, so the timings do
# not share the device.
#
#   benchmarks/device_release.sh --out DIR --rosetta CHECKOUT --site PACKAGES [--hf DIR]
#       [--batch 4 --seq 256 --steps 5 --warmup 2 --prompt 124 --answer 64 --device cuda]
#
# CHECKOUT: the released code at commit d03cc7b (fetch github:thu-nics/C2C). PACKAGES: a
# folder with its transformers 4.52.4, tokenizers 0.21.4 and huggingface_hub 0.36.2, put
# first on its PYTHONPATH (benchmarks/device_wheels.sh downloads them into DIR/release;
# `pip install --no-deps --target PACKAGES DIR/release/*.whl`); torch is the machine's.
# --hf: where the random paper folders are written (default: a fresh temporary folder).
# Smaller shapes (and --device cpu) for a smoke run on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out='' rosetta='' site='' hf=''
batch=4 seq=256 steps=5 warmup=2 prompt=124 answer=64 device=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --rosetta) rosetta="$2"; shift 2 ;;
    --site) site="$2"; shift 2 ;;
    --hf) hf="$2"; shift 2 ;;
    --batch) batch="$2"; shift 2 ;;
    --seq) seq="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --prompt) prompt="$2"; shift 2 ;;
    --answer) answer="$2"; shift 2 ;;
    --device) device="$2"; shift 2 ;;
    *) echo "device_release.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
for need in out rosetta site; do
  if [ -z "${!need}" ]; then echo "device_release.sh: --$need is required" >&2; exit 2; fi
done
for d in "$rosetta/rosetta" "$site/transformers"; do
  if [ ! -d "$d" ]; then echo "device_release.sh: no $d" >&2; exit 2; fi
done
names=(release_train release_train_noanomaly release_query)
for n in "${names[@]}"; do
  for ext in json txt; do
    if [ -e "$out/$n.$ext" ]; then  # results are never overwritten
      echo "device_release.sh: $out/$n.$ext exists (an earlier run's); choose a new --out" >&2
      exit 2
    fi
  done
done
# The released code's packages first; its own source; never c2cjax (which needs jax).
export PYTHONPATH="$site:$rosetta"
# the released code runs on its own transformers (4.52.x), not whatever else is first
if ! python3 -c "import sys, transformers, torch; print('release env: transformers', \
transformers.__version__, 'from', transformers.__file__, 'torch', torch.__version__, 'cuda', \
torch.cuda.is_available()); sys.exit(0 if transformers.__version__.startswith('4.52.') else 3)"
then
  echo "device_release.sh: --site $site does not give the released code transformers 4.52.x" \
    "(see the line above); install .whl/release/*.whl there" >&2
  exit 2
fi
mkdir -p "$out"
if [ -z "$hf" ]; then  # a temporary folder of 2 GiB: removed at the end
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  trap 'exit 130' INT  # a stop runs the EXIT trap too (bash skips it when a signal kills it)
  trap 'exit 143' TERM
  hf="$tmp/paper-hf"
fi
if [ ! -d "$hf/qwen3-0.6b" ]; then
  python3 benchmarks/paper_hf.py "$hf"
fi
status=0
common=(--pair paper --hf "$hf" --rosetta "$rosetta" --device "$device" --dtype bfloat16)
train=(--batch "$batch" --seq "$seq" --steps "$steps" --warmup "$warmup")
run() {  # NAME ARGS...: one measurement, fail-soft (the others still run)
  local name="$1"; shift
  if python3 "$@" --json "$out/$name.json" > "$out/$name.txt" 2>&1; then
    grep '^RATIO\|^ORIGINAL\|^| ' "$out/$name.txt" || true
  else
    status=1
    echo "$name FAILED: $(tail -n 1 "$out/$name.txt")"
  fi
}
run release_train benchmarks/original_train.py "${common[@]}" "${train[@]}"
run release_train_noanomaly benchmarks/original_train.py "${common[@]}" "${train[@]}" \
  --anomaly off
run release_query benchmarks/original_query.py "${common[@]}" --prompt "$prompt" \
  --answer "$answer" --reps 3
exit $status
