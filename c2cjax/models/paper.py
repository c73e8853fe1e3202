"""The paper's main pair at its exact shapes, with random weights (benchmarks, no download).

Receiver Qwen3-0.6B and sharer Qwen2.5-0.5B-Instruct: the HF ``config.json`` values
published with the checkpoints (huggingface.co/Qwen/Qwen3-0.6B and
huggingface.co/Qwen/Qwen2.5-0.5B-Instruct), built with transformers' own config classes
and converted like a downloaded model, so every shape (GQA, head_dim 128, q/k-norm,
qkv bias, tied 151,936-row embeddings) is the real one. Only the weights are random.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_QWEN3_0_6B = dict(
    vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
    num_attention_heads=16, num_key_value_heads=8, head_dim=128, hidden_act="silu",
    max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
    attention_bias=False, tie_word_embeddings=True, use_sliding_window=False,
    max_window_layers=28, bos_token_id=151643, eos_token_id=151645)
_QWEN25_0_5B_INSTRUCT = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, hidden_act="silu",
    max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1_000_000.0,
    tie_word_embeddings=True, use_sliding_window=False, sliding_window=32768,
    max_window_layers=21, bos_token_id=151643, eos_token_id=151645)
MODELS = ("qwen3-0.6b", "qwen2.5-0.5b-instruct")


def hf_config(name: str):
  """The transformers config of one of ``MODELS``."""
  import transformers as tf  # pylint: disable=import-outside-toplevel
  if name == "qwen3-0.6b":
    return tf.Qwen3Config(**_QWEN3_0_6B)
  if name == "qwen2.5-0.5b-instruct":
    return tf.Qwen2Config(**_QWEN25_0_5B_INSTRUCT)
  raise ValueError(f"unknown paper model {name!r}; choose from {MODELS}")


def random_lm(name: str, dtype=jnp.float32, seed: int = 0, **lm_kw):
  """An :class:`c2cjax.models.LM` of ``name``'s exact shapes with random weights."""
  from c2cjax.models.load import config_from_hf  # pylint: disable=import-outside-toplevel
  from c2cjax.models.lm import LM  # pylint: disable=import-outside-toplevel
  lm = LM(config_from_hf(hf_config(name)), None, dtype=dtype, source=f"random:{name}", **lm_kw)
  init = jax.jit(lambda k: jax.tree.map(lambda x: jnp.asarray(getattr(x, "value", x), dtype),
                                        lm.init_params(k), is_leaf=lambda x: hasattr(x, "value")))
  lm.params = init(jax.random.PRNGKey(seed))
  return lm
