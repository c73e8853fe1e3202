"""The paper's main recipe: receiver Qwen3-0.6B, sharer Qwen2.5-0.5B-Instruct.

AdamW lr 1e-4, wd 0.01, linear schedule with 10% warm-up, clip 1.0, global batch 256,
max length 2048, one epoch over the first 500k OpenHermes-2.5 samples (1% held out),
checkpoint every 500 steps, eval every 100, bf16 LLMs, last_aligned layer map.

  python -m c2cjax.train --config configs/qwen3.py --config.workdir=gs://bucket/run
"""

from c2cjax.defaults import train_config


def get_config():
  c = train_config()
  c.workdir = "runs/qwen3"
  return c
