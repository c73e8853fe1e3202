"""Qwen2 / Qwen2.5 (q/k/v biases) and Qwen3 (q/k RMSNorm, no biases)."""

from __future__ import annotations

from c2cjax.models import llama
from c2cjax.models.config import ModelConfig

MODEL_TYPES = ("qwen2", "qwen3")
NORMS = llama.NORMS


def config_from_hf(hf, **overrides) -> ModelConfig:
  if getattr(hf, "use_sliding_window", False):
    raise ValueError("Qwen configs with use_sliding_window=True are not supported")
  qwen3 = hf.model_type == "qwen3"
  kw = dict(arch=hf.model_type, qkv_bias=not qwen3 or bool(getattr(hf, "attention_bias", False)),
            qk_norm=qwen3)
  kw.update(overrides)
  return llama.config_from_hf(hf, **kw)
