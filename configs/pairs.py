"""The paper's other receiver/sharer pairs, on the main recipe (``configs/qwen3.py``).

Receiver Qwen3-0.6B with another sharer, or two sharers at once; everything else (fuser,
optimizer, data, sharding, checkpoints, the release's alignment scheme and clamped
``last_aligned`` layer map) is the main recipe's. Llama 3.2 and Gemma 3 have other
tokenizers: each reads the prompt through its own chat template, aligned section by
section (``c2cjax.sections``). Several sharers need templates that pad the receiver alike.

  python -m c2cjax.train --config configs/pairs.py:llama3.2-1b
  python -m c2cjax.train --config configs/pairs.py:gemma3-1b
  python -m c2cjax.train --config configs/pairs.py:qwen3-4b
  python -m c2cjax.train --config configs/pairs.py:multi     # Qwen2.5-0.5B + Llama-3.2-1B
"""

from c2cjax.defaults import train_config

SHARERS = {
    "qwen2.5-0.5b": ("Qwen/Qwen2.5-0.5B-Instruct",),
    "llama3.2-1b": ("meta-llama/Llama-3.2-1B-Instruct",),
    "gemma3-1b": ("google/gemma-3-1b-it",),
    "qwen3-4b": ("Qwen/Qwen3-4B",),
    "multi": ("Qwen/Qwen2.5-0.5B-Instruct", "meta-llama/Llama-3.2-1B-Instruct"),
}


def get_config(pair: str = "llama3.2-1b"):
  if pair not in SHARERS:
    raise ValueError(f"unknown pair {pair!r}; choose from {sorted(SHARERS)}")
  c = train_config()
  c.alignment = "release"  # as configs/qwen3.py
  c.layer_map = "last_aligned_clamped"
  c.sharers = SHARERS[pair]
  c.workdir = f"runs/qwen3-0.6b_{pair}"
  return c
