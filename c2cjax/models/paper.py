"""The paper's main pair at its exact shapes, with random weights (benchmarks, no download).

Receiver Qwen3-0.6B and sharer Qwen2.5-0.5B-Instruct: the HF ``config.json`` values
published with the checkpoints (huggingface.co/Qwen/Qwen3-0.6B and
huggingface.co/Qwen/Qwen2.5-0.5B-Instruct), built with transformers' own config classes
and converted like a downloaded model, so every shape (GQA, head_dim 128, q/k-norm,
qkv bias, tied 151,936-row embeddings) is the real one. Only the weights are random.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp

# The published values, as data: the released code's benchmarks (benchmarks/paper_hf.py, run
# under the original code's transformers, without jax) build the same models from this file.
CONFIG_FILE = pathlib.Path(__file__).with_name("paper_configs.json")
MODELS = ("qwen3-0.6b", "qwen2.5-0.5b-instruct")


def published_config(name: str) -> dict:
  """``name``'s published ``config.json`` values, ``model_type`` included (``source`` says
  where they were published)."""
  configs = json.loads(CONFIG_FILE.read_text())
  if name not in configs:
    raise ValueError(f"unknown paper model {name!r}; choose from {MODELS}")
  return {k: v for k, v in configs[name].items() if k != "source"}


def hf_config(name: str):
  """The transformers config of one of ``MODELS``."""
  import transformers as tf  # pylint: disable=import-outside-toplevel
  values = published_config(name)
  return tf.AutoConfig.for_model(values.pop("model_type"), **values)


def random_lm(name: str, dtype=jnp.float32, seed: int = 0, **lm_kw):
  """An :class:`c2cjax.models.LM` of ``name``'s exact shapes with random weights."""
  from c2cjax.models.load import config_from_hf  # pylint: disable=import-outside-toplevel
  from c2cjax.models.lm import LM  # pylint: disable=import-outside-toplevel
  lm = LM(config_from_hf(hf_config(name)), None, dtype=dtype, source=f"random:{name}", **lm_kw)
  init = jax.jit(lambda k: jax.tree.map(lambda x: jnp.asarray(getattr(x, "value", x), dtype),
                                        lm.init_params(k), is_leaf=lambda x: hasattr(x, "value")))
  lm.params = init(jax.random.PRNGKey(seed))
  return lm
