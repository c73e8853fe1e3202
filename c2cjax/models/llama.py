"""Llama 2/3.x (incl. SmolLM2): RMSNorm, SwiGLU, GQA, RoPE with optional Llama 3 scaling."""

from __future__ import annotations

from c2cjax.models.config import ModelConfig, RopeConfig, eos_ids

MODEL_TYPES = ("llama",)

# HF per-layer norm name -> our block's norm name.
NORMS = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}


def rope_from_hf(hf) -> RopeConfig:
  params = getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None) or {}
  return RopeConfig.from_hf(params, getattr(hf, "rope_theta", None) or 10_000.0)


def config_from_hf(hf, **overrides) -> ModelConfig:
  head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
  kw = dict(
      arch="llama",
      vocab_size=hf.vocab_size,
      hidden_size=hf.hidden_size,
      intermediate_size=hf.intermediate_size,
      num_layers=hf.num_hidden_layers,
      num_heads=hf.num_attention_heads,
      num_kv_heads=getattr(hf, "num_key_value_heads", None) or hf.num_attention_heads,
      head_dim=head_dim,
      rms_eps=hf.rms_norm_eps,
      rope=rope_from_hf(hf),
      qkv_bias=bool(getattr(hf, "attention_bias", False)),
      tie_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
      max_position_embeddings=hf.max_position_embeddings,
      bos_token_id=hf.bos_token_id,
      eos_token_ids=eos_ids(hf.eos_token_id),
      pad_token_id=getattr(hf, "pad_token_id", None),
  )
  if getattr(hf, "mlp_bias", False):
    raise ValueError("Llama configs with mlp_bias=True are not supported")
  if getattr(hf, "hidden_act", "silu") != "silu":
    raise ValueError(f"Llama hidden_act={hf.hidden_act!r} is not supported (only silu)")
  kw.update(overrides)
  return ModelConfig(**kw)
