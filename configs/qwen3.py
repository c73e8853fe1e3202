"""The paper's main recipe: receiver Qwen3-0.6B, sharer Qwen2.5-0.5B-Instruct.

AdamW lr 1e-4, wd 0.01, linear schedule with 10% warm-up, clip 1.0, global batch 256,
max length 2048, one epoch over the first 500k OpenHermes-2.5 samples (1% held out),
checkpoint every 500 steps, eval every 100, bf16 LLMs; the released C2C's data path
(``alignment="release"``) and its clamped ``last_aligned`` layer map. Qwen3 and Qwen2.5 share
one vocabulary, so the release scheme takes its path without the aligner here (the sharer
reads the receiver's ids, every prompt token but the last fused), as the release trains
this pair (its recipe has ``is_do_alignment`` off).

  python -m c2cjax.train --config configs/qwen3.py --config.workdir=gs://bucket/run
"""

from c2cjax.defaults import train_config


def get_config():
  c = train_config()
  c.alignment = "release"
  c.layer_map = "last_aligned_clamped"
  c.workdir = "runs/qwen3"
  return c
