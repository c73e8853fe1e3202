#!/usr/bin/env bash
# Wheels of c2cjax's imports that a GPU machine's own Python may lack (its image had jax,
# flax, optax, orbax, transformers and torch, but not grain or ml_collections, on
# 2026-12-04), for machines with no package registry: download them here into DIR
# (default .whl, for CPython 3.12 on x86-64 Linux), carry DIR there, and run
#
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl
#   PYTHONPATH=/tmp/site bash benchmarks/device.sh --out OUT
#
#   benchmarks/device_wheels.sh [DIR] [PYTHON_VERSION]
#
# DIR/release gets the released C2C code's own transformers, tokenizers and huggingface_hub
# (benchmarks/device_release.sh runs that code beside the machine's torch; install them into
# a folder of their own: `pip install --no-deps --target PACKAGES DIR/release/*.whl`).
set -euo pipefail
dir="${1:-.whl}"
py="${2:-3.12}"
mkdir -p "$dir"
# grain needs array-record and portpicker, ml_collections nothing beyond absl-py and PyYAML
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$dir" \
  grain==0.2.18 array-record==0.8.6 portpicker==1.6.0 ml-collections==1.1.0
mkdir -p "$dir/release"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$py" \
  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$dir/release" transformers==4.52.4 tokenizers==0.21.4 huggingface_hub==0.36.2
ls "$dir" "$dir/release"
