"""Tiny random models of every supported family: tests, smoke runs, ``configs/tiny.py``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from c2cjax.models.lm import LM
from c2cjax.models.registry import config_from_hf

_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
             max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
             pad_token_id=0)


def hf_config(kind: str, **overrides):
  """Tiny HF configs covering every family and feature the parity tests need."""
  import transformers as tf

  base = dict(_TINY, **overrides)
  if kind == "qwen2":  # GQA ratio 1, biases, untied
    return tf.Qwen2Config(**base, num_attention_heads=4, num_key_value_heads=4,
                          tie_word_embeddings=False, rope_theta=10_000.0)
  if kind == "qwen3":  # GQA 4:2 (ratio 2), q/k-norm, tied
    return tf.Qwen3Config(**base, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          tie_word_embeddings=True, rope_theta=1_000_000.0)
  if kind == "llama3":  # GQA ratio 3, Llama 3 rope scaling, untied
    return tf.LlamaConfig(**dict(base, hidden_size=96), num_attention_heads=6,
                          num_key_value_heads=2,
                          tie_word_embeddings=False,
                          rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0,
                                           "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 32})
  if kind == "gemma3":  # sliding window 8 < sequence, local/global rope, GQA 2:1, tied
    cfg = dict(base, num_hidden_layers=4)
    return tf.Gemma3TextConfig(**cfg, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                               sliding_window=8, query_pre_attn_scalar=24,
                               layer_types=["sliding_attention", "full_attention",
                                            "sliding_attention", "full_attention"],
                               final_logit_softcapping=30.0, tie_word_embeddings=True)
  raise KeyError(kind)


KINDS = ("qwen2", "qwen3", "llama3", "gemma3")


def tiny_lm(kind: str, tokenizer=None, seed: int = 0, dtype=jnp.float32, **overrides):
  """A random tiny :class:`c2cjax.models.LM` (vocab sized to ``tokenizer`` when given)."""

  if tokenizer is not None:
    overrides.setdefault("vocab_size", len(tokenizer))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
      value = getattr(tokenizer, name, None)
      overrides.setdefault(name, value if value is not None else 0)
  lm = LM(config_from_hf(hf_config(kind, **overrides)), None, tokenizer, dtype=dtype,
          source=f"tiny:{kind}")
  boxed = lm.init_params(jax.random.PRNGKey(seed))
  lm.params = jax.tree.map(lambda x: jnp.asarray(getattr(x, "value", x), dtype), boxed,
                           is_leaf=lambda x: hasattr(x, "value"))
  return lm
