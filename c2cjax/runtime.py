"""Process-wide settings for c2cjax's command-line programs: the cache folder and XLA's
persistent compilation cache.

``cache_root()`` is ``$C2CJAX_CACHE`` (default ``~/.cache/c2cjax``): converted params,
assembled GGUF files, tokenizers, TFDS data and compiled programs live under it.

``enable_compilation_cache()`` turns on JAX's persistent compilation cache, so a second run
of the same shapes (a resumed training run, the next shard of an evaluation, a demo run
twice) loads its programs instead of compiling them. The CLIs (``c2cjax.train``,
``c2cjax.eval``, ``c2cjax.demo``) call it; library code never changes global JAX config.

``compiler_options()`` are the XLA options c2cjax's own programs compile with (``LM`` and
``C2C``'s jitted prefill and generate, the training and eval steps): passed per program,
never global.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import platform
import sys

import jax


def cache_root() -> pathlib.Path:
  """``$C2CJAX_CACHE`` or ``~/.cache/c2cjax``."""
  return pathlib.Path(os.environ.get("C2CJAX_CACHE", "~/.cache/c2cjax")).expanduser()


def _cpuinfo_flags_line() -> str:
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      return next((line for line in f if line.startswith(("flags", "Features"))), "")
  except OSError:
    return ""


def cpu_flags() -> frozenset[str]:
  """The host CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
  return frozenset(_cpuinfo_flags_line().partition(":")[2].split())


def machine_id() -> str:
  """A short hash of the CPU (architecture and feature flags): XLA:CPU entries are native
  code for the host's CPU, so a cache folder shared between different machines (a network
  home) must not mix them."""
  return hashlib.sha256((platform.machine() + _cpuinfo_flags_line()).encode()).hexdigest()[:12]


def enable_compilation_cache(path: str | os.PathLike | None = None,
                             min_compile_time_s: float = 0.5) -> pathlib.Path | None:
  """Turns on JAX's persistent compilation cache; returns its folder (None: turned off).

  Order: ``path``; else a folder the user set (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config``), left as it is; else ``cache_root()/xla/<cpu id>``.
  ``C2CJAX_COMPILATION_CACHE=0`` turns it off. Programs that compile in under
  ``min_compile_time_s`` are not stored.
  """
  if os.environ.get("C2CJAX_COMPILATION_CACHE", "1").lower() in ("0", "false", "off", "no"):
    return None
  current = jax.config.jax_compilation_cache_dir
  if path is None and current:
    return pathlib.Path(current)
  folder = pathlib.Path(path) if path is not None else cache_root() / "xla" / machine_id()
  folder.mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
  return folder


# XLA:CPU hands dots, reductions and elementwise work to YNNPACK by default. Whether that
# pays depends on the CPU; measured on two 2-core machine kinds (RESULTS.md):
# - Intel Xeon with AMX (fifteenth-eighteenth sessions): slower. Each of batch-1 decode's
#   small attention products cost 60-70 us through it, with its cache slice copied out
#   first; prefill's products were slower; the local training step took 1.25x as long.
# - AMD EPYC Zen 5 with AVX-512 and no AMX (nineteenth session): faster. The training step
#   x1.07-1.13 (local pair) and x1.4-1.6 (paper shapes), prefill ~8%, decode ~7%.
# So "auto" (the default) turns YNNPACK's fusions off on CPUs with AMX and keeps XLA's
# default elsewhere; C2CJAX_CPU_YNN=1 / 0 forces either.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_YNN_VAR = "C2CJAX_CPU_YNN"


def env_flag(name: str, default: bool) -> bool:
  """A yes/no environment switch: 1/true/on/yes or 0/false/off/no (any case); unset is
  ``default``; any other value is a ValueError naming the variable and its value."""
  value = os.environ.get(name)
  if value is None:
    return default
  if value.lower() in ("1", "true", "on", "yes"):
    return True
  if value.lower() in ("0", "false", "off", "no"):
    return False
  raise ValueError(f"{name}={value!r}: use 1/true/on/yes or 0/false/off/no")


def cpu_ynn() -> bool:
  """Whether c2cjax's CPU programs keep XLA's YNNPACK fusions: ``$C2CJAX_CPU_YNN`` as a
  yes/no switch, or ``auto`` (unset): yes unless the CPU has AMX (see ``_CPU_OPTIONS``)."""
  value = os.environ.get(_YNN_VAR, "auto")
  if value.strip().lower() == "auto":
    return "amx_tile" not in cpu_flags()
  try:
    return env_flag(_YNN_VAR, False)
  except ValueError as e:
    raise ValueError(f"{e}, or auto") from None


def compiler_options() -> dict[str, str]:
  """XLA compiler options for c2cjax's programs (``LM``/``C2C``'s prefill and generate, the
  training and eval steps) on the default backend: on CPU, YNNPACK's fusions off where
  :func:`cpu_ynn` says so; elsewhere none. Read when a program is built."""
  if jax.default_backend() != "cpu" or cpu_ynn():
    return {}
  return dict(_CPU_OPTIONS)


# XLA:CPU allocates each run's temporary buffer afresh (one mmap: 3.8 GiB for the training
# step at the original code's shape) and the kernel zero-fills every 4 KiB page of it on
# first touch: ~990k page faults, 1.6 s of system time a step (RESULTS.md, twentieth session).
# glibc's malloc asks for transparent huge pages on such mappings when its tunable
# glibc.malloc.hugetlb=1 is set (glibc >= 2.35, THP mode "madvise"): 2 MiB pages, 1/512 of
# the faults, the same memory. Tunables are read at process start, so the training CLI
# restarts itself once with it (reexec_with_hugepages); $C2CJAX_CPU_HUGEPAGES: auto (the
# default: where THP is "madvise"), 1 (also where THP is off or "always"), 0 (never).
_HUGEPAGES_VAR = "C2CJAX_CPU_HUGEPAGES"
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode() -> str | None:
  """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``), or None."""
  try:
    with open(_THP_MODE_FILE, encoding="utf-8") as f:
      text = f.read()
  except OSError:
    return None
  return next((w[1:-1] for w in text.split() if w.startswith("[")), None)


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the glibc this process runs on, or None (another C library)."""
  try:
    name, _, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
  except (AttributeError, ValueError, OSError):
    return None
  if name != "glibc":
    return None
  try:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def hugepage_env(environ=None) -> dict[str, str] | None:
  """``environ`` (default ``os.environ``) with :data:`HUGEPAGE_TUNABLE` added to
  ``GLIBC_TUNABLES``, or None where nothing is to change: ``$C2CJAX_CPU_HUGEPAGES`` is 0,
  the tunable is set already (any value: the user's choice stands), the C library is not
  glibc >= 2.35, or (``auto``) the kernel's THP mode is not ``madvise``. A bad
  ``$C2CJAX_CPU_HUGEPAGES`` is a ValueError naming it."""
  environ = dict(os.environ if environ is None else environ)
  value = environ.get(_HUGEPAGES_VAR, "auto").strip().lower()
  if value not in ("auto", "1", "0"):
    raise ValueError(f"{_HUGEPAGES_VAR}={environ[_HUGEPAGES_VAR]!r}: use auto, 1 or 0")
  tunables = [t for t in environ.get("GLIBC_TUNABLES", "").split(":") if t]
  if (value == "0" or any(t.startswith("glibc.malloc.hugetlb=") for t in tunables)
      or (glibc_version() or (0, 0)) < (2, 35)
      or (value == "auto" and thp_mode() != "madvise")):
    return None
  environ["GLIBC_TUNABLES"] = ":".join([*tunables, HUGEPAGE_TUNABLE])
  return environ


def reexec_with_hugepages() -> None:
  """Restarts this process (the same pid and command line) with :func:`hugepage_env`'s
  environment, once; returns where there is nothing to change. For command-line
  programs' ``__main__``, before any work: what the process did so far is lost. The
  restarted process has ``_C2CJAX_REEXEC=1`` and the tunable in ``GLIBC_TUNABLES``."""
  env = hugepage_env()
  if env is None or os.environ.get("_C2CJAX_REEXEC") == "1":
    return
  env["_C2CJAX_REEXEC"] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  try:  # quietly: a bad flag's error stays the one line it is
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError as e:  # no interpreter path to run again: go on without the tunable
    print(f"c2cjax: could not restart ({e}); going on without it", file=sys.stderr, flush=True)


cpu_ynn()  # a bad C2CJAX_CPU_YNN stops `import c2cjax`, before any model loads
hugepage_env()  # so does a bad C2CJAX_CPU_HUGEPAGES
