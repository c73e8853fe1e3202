"""Evaluation of the paper's pair: receiver Qwen3-0.6B, sharer Qwen2.5-0.5B-Instruct.

Models come from the Hugging Face hub (hub ids; local directories work too), the fuser
from a training run with the default config (``runs/default/fuser``). C-Eval is read from
``--config.ceval_path`` (the official zip's layout), else from the hub; if neither works it
is skipped with a message.

  python -m c2cjax.eval --config configs/eval_qwen3.py --config.ceval_path=/data/ceval
"""

from c2cjax.defaults import eval_config


def get_config():
  c = eval_config()
  c.name = "qwen3"
  c.receiver = "Qwen/Qwen3-0.6B"
  c.sharers = ("Qwen/Qwen2.5-0.5B-Instruct",)
  c.fusers = ("runs/default/fuser",)
  c.benchmarks = ("mmlu_redux", "openbookqa", "arc_challenge", "ceval")
  c.ceval_path = None  # set to a C-Eval directory to read it from disk
  c.methods = ("logits",)  # the paper's scoring
  c.systems = ("receiver", "sharer", "t2t", "c2c")
  c.prompts.enable_thinking = False  # the paper evaluates Qwen3 with thinking off
  return c
