"""Evaluation of the offline pair: receiver SmolLM2-135M-Instruct, sharer Gemma-3-270M.

Both models come from their PyPI GGUF packages (``c2cjax.offline``), the fuser from
``python -m c2cjax.train --config configs/local.py`` (``runs/local/fuser``). Without it the
C2C systems are skipped, unless ``--config.random_fuser=True`` (smoke run, gates open).

  python -m c2cjax.eval --config configs/eval_local.py --config.limit=50
  python -m c2cjax.eval --config configs/eval_local.py \\
      --config.benchmarks="('arc_challenge', 'openbookqa')" --config.methods=logits
"""

from c2cjax.defaults import eval_config


def get_config():
  c = eval_config()
  c.name = "local"
  c.receiver = "offline:smollm2"
  c.sharers = ("offline:gemma3",)  # the base model: plain (no chat template) prompts
  c.fusers = ("runs/local/fuser",)
  c.benchmarks = ("arc_challenge", "openbookqa", "mmlu_redux")
  c.methods = ("cloze", "logits")
  c.systems = ("receiver", "sharer", "t2t", "c2c")
  return c
