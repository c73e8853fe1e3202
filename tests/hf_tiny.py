"""Tiny random Hugging Face models for parity tests (built and saved by the tests)."""

from __future__ import annotations

import pathlib

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)


def hf_config(kind: str):
  """Configs covering every family and feature the issue lists."""
  import transformers as tf

  if kind == "qwen2":  # GQA ratio 1, biases, untied
    return tf.Qwen2Config(**TINY, num_attention_heads=4, num_key_value_heads=4,
                          tie_word_embeddings=False, rope_theta=10_000.0)
  if kind == "qwen3":  # GQA 4:2 (ratio 2), q/k-norm, tied
    return tf.Qwen3Config(**TINY, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          tie_word_embeddings=True, rope_theta=1_000_000.0)
  if kind == "llama3":  # GQA ratio 3, Llama 3 rope scaling, untied
    return tf.LlamaConfig(**dict(TINY, hidden_size=96), num_attention_heads=6, num_key_value_heads=2,
                          tie_word_embeddings=False,
                          rope_parameters={"rope_type": "llama3", "rope_theta": 500_000.0,
                                           "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 32})
  if kind == "gemma3":  # sliding window 8 < sequence, local/global rope, GQA 2:1, tied
    cfg = dict(TINY, num_hidden_layers=4)
    return tf.Gemma3TextConfig(**cfg, num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                               sliding_window=8, query_pre_attn_scalar=24,
                               layer_types=["sliding_attention", "full_attention",
                                            "sliding_attention", "full_attention"],
                               final_logit_softcapping=30.0, tie_word_embeddings=True)
  raise KeyError(kind)


KINDS = ("qwen2", "qwen3", "llama3", "gemma3")


def build(kind: str, directory: pathlib.Path | None = None, seed: int = 0):
  """A random fp32 HF causal LM (saved to ``directory`` when given)."""
  import torch
  import transformers as tf

  torch.manual_seed(seed)
  model = tf.AutoModelForCausalLM.from_config(hf_config(kind)).float().eval()
  with torch.no_grad():  # norms start at 1 / 0: perturb so their conversion is tested
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  if directory is not None:
    model.save_pretrained(directory)
  return model
