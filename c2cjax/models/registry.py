"""The model registry: HF ``model_type`` -> the architecture module that reads its config."""

from __future__ import annotations

from c2cjax.models import gemma, llama, qwen
from c2cjax.models.config import ModelConfig

ARCHS = {t: m for m in (llama, qwen, gemma) for t in m.MODEL_TYPES}
SUPPORTED_MODEL_TYPES = tuple(sorted(ARCHS))


def arch_module(model_type: str):
  """The module (llama, qwen, gemma) for a HF ``model_type``; a clear error if unknown."""
  try:
    return ARCHS[model_type]
  except KeyError:
    raise ValueError(
        f"unknown architecture model_type={model_type!r}; supported: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}") from None


def config_from_hf(hf_config, **overrides) -> ModelConfig:
  """A :class:`ModelConfig` from a transformers config of a supported architecture."""
  return arch_module(hf_config.model_type).config_from_hf(hf_config, **overrides)
