"""Gemma 3 (text): (1 + w) RMSNorm, sandwich norms, GeGLU, q/k-norm, scaled embeddings,
sliding-window layers with their own RoPE base interleaved with global ones."""

from __future__ import annotations

from c2cjax.models.config import ModelConfig, RopeConfig, eos_ids

MODEL_TYPES = ("gemma3_text", "gemma3")
NORMS = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "post_attn_norm",
    "pre_feedforward_layernorm": "mlp_norm",
    "post_feedforward_layernorm": "post_mlp_norm",
}


def _ropes(hf) -> tuple[RopeConfig, RopeConfig]:
  params = getattr(hf, "rope_parameters", None)
  if params and "full_attention" in params:  # transformers 5
    return (RopeConfig.from_hf(params["full_attention"], 1_000_000.0),
            RopeConfig.from_hf(params.get("sliding_attention"), 10_000.0))
  glob = RopeConfig.from_hf(getattr(hf, "rope_scaling", None),
                            getattr(hf, "rope_theta", None) or 1_000_000.0)
  return glob, RopeConfig(theta=getattr(hf, "rope_local_base_freq", 10_000.0))


def config_from_hf(hf, **overrides) -> ModelConfig:
  hf = getattr(hf, "text_config", None) or hf  # multimodal Gemma3Config wraps the text one
  glob, local = _ropes(hf)
  layer_types = getattr(hf, "layer_types", None)
  if not layer_types:
    pattern = getattr(hf, "sliding_window_pattern", 6)
    layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                   for i in range(hf.num_hidden_layers)]
  act = getattr(hf, "hidden_activation", None) or getattr(hf, "hidden_act", "gelu_pytorch_tanh")
  if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
    raise ValueError(f"Gemma activation {act!r} is not supported (only gelu_pytorch_tanh)")
  kw = dict(
      arch="gemma3",
      vocab_size=hf.vocab_size,
      hidden_size=hf.hidden_size,
      intermediate_size=hf.intermediate_size,
      num_layers=hf.num_hidden_layers,
      num_heads=hf.num_attention_heads,
      num_kv_heads=hf.num_key_value_heads,
      head_dim=hf.head_dim,
      rms_eps=hf.rms_norm_eps,
      rope=glob,
      local_rope=local,
      sliding_window=hf.sliding_window,
      layer_is_local=tuple(t == "sliding_attention" for t in layer_types),
      qkv_bias=bool(getattr(hf, "attention_bias", False)),
      qk_norm=True,
      norm_offset=1.0,
      sandwich_norm=True,
      embed_scale=hf.hidden_size ** 0.5,
      activation="gelu_tanh",
      tie_embeddings=bool(getattr(hf, "tie_word_embeddings", True)),
      attn_scale=hf.query_pre_attn_scalar ** -0.5,
      attn_softcap=getattr(hf, "attn_logit_softcapping", None),
      final_softcap=getattr(hf, "final_logit_softcapping", None),
      max_position_embeddings=hf.max_position_embeddings,
      bos_token_id=hf.bos_token_id,
      eos_token_ids=eos_ids(hf.eos_token_id),
      pad_token_id=getattr(hf, "pad_token_id", None),
  )
  kw.update(overrides)
  return ModelConfig(**kw)
