"""Frozen LLM ports (Llama, Qwen2/2.5/3, Gemma 3) on shared Flax Linen layers.

  config: ModelConfig / RopeConfig; layers: the Linen Decoder and its blocks;
  attention: the attention kernels; llama / qwen / gemma: HF config -> ModelConfig per
  family; cache: KVCache; lm: pure forward / prefill_cache / prefill / generate functions
  and the thin LM class; registry: model_type -> family module; load / convert: hub,
  safetensors and GGUF weights; identity: what a manifest or checkpoint records of a
  model; tiny: tiny random models (tests); paper: the paper's pair at its shapes, random.
"""

from c2cjax.models.cache import KVCache
from c2cjax.models.config import ModelConfig, RopeConfig
from c2cjax.models.load import (SUPPORTED_MODEL_TYPES, config_from_hf, from_hf_model,
                                load_model)
from c2cjax.models.lm import LM

__all__ = ["KVCache", "ModelConfig", "RopeConfig", "LM", "load_model", "from_hf_model",
           "config_from_hf", "SUPPORTED_MODEL_TYPES"]
