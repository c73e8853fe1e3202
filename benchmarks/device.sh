#!/usr/bin/env bash
# One accelerator, at most 9 minutes (parity tests 4, benchmarks 5; the released code's run
# 3.5 more): parity tests on the
# device, decode tok/s vs transformers, the training step at the paper's shapes (tokens/s,
# step time, peak device memory, MFU) and C2C latency vs receiver vs text-to-text; writes
# DIR/device.json and DIR/device.md (and DIR/parity.txt), the JSON and table again after
# each benchmark, so a run cut short keeps what it measured.
#
#   benchmarks/device.sh [--dry] [--out DIR] [--peak-tflops X] [--more-train BxT,...]
#       [--pairs-at-once N,...] [--no-parity] [--rosetta CHECKOUT --release-site PACKAGES]
#
# --dry: CPU, tiny shapes, parity tests skipped (CI runs it: tests/test_device_script.py).
# --no-parity: skip the parity tests (e.g. when they passed on this kind already).
# --pairs-at-once: the paper-shape step again with each fuser computing N pairs together.
# --rosetta/--release-site: afterwards, the released PyTorch code at the same shapes on the
# same device (benchmarks/device_release.sh, at most 3.5 more minutes) into DIR/release.
# On a machine whose Python lacks grain or ml_collections and cannot reach a registry,
# carry the wheels that benchmarks/device_wheels.sh downloads (its header says how).
set -euo pipefail
cd "$(dirname "$0")/.."
out=runs/device
dry=()
extra=()
noparity=0
rosetta=''
release_site=''
while [ $# -gt 0 ]; do
  case "$1" in
    --dry) dry=(--dry); shift ;;
    --no-parity) noparity=1; shift ;;
    --rosetta) rosetta="$2"; shift 2 ;;
    --release-site) release_site="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --peak-tflops) extra+=(--peak-tflops "$2"); shift 2 ;;
    --more-train) extra+=(--more-train "$2"); shift 2 ;;  # e.g. 16x512: GPU scaling
    --pairs-at-once) extra+=(--pairs-at-once "$2"); shift 2 ;;  # e.g. 4,28: fuser pairs
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
for f in device.json device.md parity.txt; do
  if [ -e "$out/$f" ]; then  # results are never overwritten
    echo "device.sh: $out/$f exists (an earlier run's); choose a new --out" >&2; exit 2
  fi
done
if [ -n "$rosetta$release_site" ]; then  # the released code's run: checked now, not after
  if [ -z "$rosetta" ] || [ -z "$release_site" ]; then
    echo "device.sh: --rosetta and --release-site go together" >&2; exit 2
  fi
  for d in "$rosetta/rosetta" "$release_site/transformers"; do
    if [ ! -d "$d" ]; then echo "device.sh: no $d" >&2; exit 2; fi
  done
  if [ -e "$out/release" ]; then
    echo "device.sh: $out/release exists (an earlier run's); choose a new --out" >&2; exit 2
  fi
fi
release_path="${PYTHONPATH:-}"  # the released code's run gets none of c2cjax's paths
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# a bad flag or --out is one line now, not after minutes of parity tests
python3 benchmarks/device_bench.py --check-args --out "$out" "${dry[@]}" "${extra[@]}"
mkdir -p "$out"
if [ ${#dry[@]} -gt 0 ]; then
  export JAX_PLATFORMS=cpu
  parity="skipped (--dry)"
elif [ "$noparity" = 1 ]; then
  parity="skipped (--no-parity)"
else
  python3 -c "import jax; d = jax.devices()[0]; print('device:', d.platform, d.device_kind)"
  # fp32 parity on the device: full-precision matmuls (no TF32), as the CPU suite runs them,
  # and XLA's full optimisation (the suite's conftest turns most of it off to compile fast
  # on 2 cores; the device's fusions are what is to be tested here). Eight pytest workers
  # share the device (no preallocation) and compile in parallel on the host's cores;
  # torch's CPU references get two threads each.
  if XLA_PYTHON_CLIENT_PREALLOCATE=false OMP_NUM_THREADS=2 JAX_DISABLE_MOST_OPTIMIZATIONS=0 \
      JAX_DEFAULT_MATMUL_PRECISION=highest timeout 240 python3 -m pytest -q -n 8 \
      tests/test_models.py tests/test_attention.py > "$out/parity.txt" 2>&1; then
    parity="passed ($(tail -n 1 "$out/parity.txt"))"
  else
    parity="FAILED (see parity.txt: $(tail -n 1 "$out/parity.txt"))"
  fi
  echo "parity: $parity"
fi
status=0
timeout 300 python3 benchmarks/device_bench.py --out "$out" --parity "$parity" \
  "${dry[@]}" "${extra[@]}" || status=$?
echo "wrote $out/device.json and $out/device.md"
if [ -n "$rosetta" ]; then
  shapes=(--device cuda)
  if [ ${#dry[@]} -gt 0 ]; then  # the paper's models still, the fewest tokens and steps
    shapes=(--device cpu --batch 1 --seq 16 --steps 1 --warmup 0 --prompt 16 --answer 4)
  fi
  PYTHONPATH="$release_path" timeout 210 bash benchmarks/device_release.sh --out "$out/release" \
    --rosetta "$rosetta" --site "$release_site" "${shapes[@]}" || status=$?
fi
exit "$status"
