"""The cache folder and the persistent compilation cache the CLIs turn on."""

import os
import subprocess
import sys

from c2cjax import runtime

SCRIPT = """
import jax, jax.numpy as jnp
from c2cjax.runtime import enable_compilation_cache
folder = enable_compilation_cache(min_compile_time_s=0)
print(folder)
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).block_until_ready()
"""


def _run(env):
  out = subprocess.run([sys.executable, "-c", SCRIPT], env={**os.environ, **env},
                       capture_output=True, text=True, check=True, timeout=300)
  return out.stdout.strip().splitlines()[-1]


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.setenv("C2CJAX_CACHE", str(tmp_path))
  assert runtime.cache_root() == tmp_path
  monkeypatch.delenv("C2CJAX_CACHE")
  assert runtime.cache_root() == runtime.pathlib.Path("~/.cache/c2cjax").expanduser()


def test_compiled_programs_are_stored_per_machine_and_can_be_turned_off(tmp_path):
  env = {"C2CJAX_CACHE": str(tmp_path), "JAX_COMPILATION_CACHE_DIR": ""}
  folder = _run(env)
  assert folder.startswith(str(tmp_path / "xla")) and os.listdir(folder), folder
  n = len(os.listdir(folder))
  assert _run(env) == folder and len(os.listdir(folder)) == n  # loaded, not stored again
  assert _run({**env, "C2CJAX_COMPILATION_CACHE": "0"}) == "None"
  own = tmp_path / "mine"
  assert _run({**env, "JAX_COMPILATION_CACHE_DIR": str(own)}) == str(own)


def test_cpu_programs_carry_the_ynnpack_setting(monkeypatch):
  """c2cjax's own LM programs carry the CPU options (never global config).
  ``C2CJAX_CPU_YNN=0`` leaves no YNNPACK fusion in the compiled program, ``1`` keeps XLA's
  defaults, ``auto`` (unset) decides by the CPU (off with AMX), and a bad value names itself."""
  import jax
  import jax.numpy as jnp
  import pytest
  from c2cjax.models import lm as lm_lib
  from c2cjax.models.tiny import tiny_lm
  off = {"xla_cpu_experimental_ynn_fusion_type": ""}
  monkeypatch.setenv("C2CJAX_CPU_YNN", "0")
  assert runtime.compiler_options() == off
  lm = tiny_lm("qwen3", seed=0)
  assert lm.xla_options == off
  args = (lm.module, lm.params, jnp.ones((1, 4), jnp.int32), lm.init_cache(1, 8))
  hlo = lambda options: jax.jit(lm_lib.forward, static_argnums=0, compiler_options=options
                                ).lower(*args).compile().as_text()
  assert "__ynn_fusion" not in hlo(lm.xla_options)
  monkeypatch.setenv("C2CJAX_CPU_YNN", "1")
  assert runtime.compiler_options() == {}
  assert type(lm)(lm.config, lm.params).xla_options == {}
  assert "__ynn_fusion" in hlo({})
  for value in ("auto", None):
    if value is None:
      monkeypatch.delenv("C2CJAX_CPU_YNN")
    else:
      monkeypatch.setenv("C2CJAX_CPU_YNN", value)
    amx = "amx_tile" in runtime.cpu_flags()
    assert runtime.compiler_options() == (off if amx else {})
  monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512f", "amx_tile"}))
  assert runtime.compiler_options() == off
  monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512f"}))
  assert runtime.compiler_options() == {}
  monkeypatch.setenv("C2CJAX_CPU_YNN", "maybe")
  with pytest.raises(ValueError, match="C2CJAX_CPU_YNN='maybe'.*or auto"):
    runtime.compiler_options()


def test_hugepage_env_rules(monkeypatch):
  """``C2CJAX_CPU_HUGEPAGES``: auto adds glibc's THP tunable where the kernel's mode is
  madvise, 1 wherever glibc >= 2.35 runs, 0 never; the user's own hugetlb tunable stands,
  other tunables are kept, and a bad value names itself."""
  import pytest
  tunable = runtime.HUGEPAGE_TUNABLE
  monkeypatch.setattr(runtime, "glibc_version", lambda: (2, 36))
  monkeypatch.setattr(runtime, "thp_mode", lambda: "madvise")
  assert runtime.hugepage_env({"A": "1"}) == {"A": "1", "GLIBC_TUNABLES": tunable}
  assert runtime.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == {
      "GLIBC_TUNABLES": "glibc.malloc.arena_max=2:" + tunable}
  assert runtime.hugepage_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
  assert runtime.hugepage_env({"C2CJAX_CPU_HUGEPAGES": "0"}) is None
  for mode in ("always", "never", None):
    monkeypatch.setattr(runtime, "thp_mode", lambda mode=mode: mode)
    assert runtime.hugepage_env({}) is None
    assert runtime.hugepage_env({"C2CJAX_CPU_HUGEPAGES": "1"})["GLIBC_TUNABLES"] == tunable
  for version in ((2, 34), None):  # no tunable before glibc 2.35, none in musl
    monkeypatch.setattr(runtime, "glibc_version", lambda version=version: version)
    assert runtime.hugepage_env({"C2CJAX_CPU_HUGEPAGES": "1"}) is None
  with pytest.raises(ValueError, match="C2CJAX_CPU_HUGEPAGES='maybe': use auto, 1 or 0"):
    runtime.hugepage_env({"C2CJAX_CPU_HUGEPAGES": "maybe"})


RESTART = """
import ctypes, os
from c2cjax import runtime
runtime.reexec_with_hugepages()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
n = 256 << 20
p = libc.malloc(n)  # glibc's malloc, as XLA's buffers (numpy asks for THP itself)
ctypes.memset(p, 1, n)
rollup = open("/proc/self/smaps_rollup").read().split()
print(os.getpid(), os.environ.get("GLIBC_TUNABLES"), rollup[rollup.index("AnonHugePages:") + 1])
"""


def test_the_restart_gives_glibc_malloc_huge_pages():
  """``reexec_with_hugepages`` restarts the same process (same pid) once with the tunable,
  and then a large glibc malloc is backed by huge pages; with ``C2CJAX_CPU_HUGEPAGES=0`` it
  does not restart. Where the kernel's THP mode is not madvise, auto does not restart."""
  import pytest
  if runtime.glibc_version() is None or runtime.glibc_version() < (2, 35):
    pytest.skip("needs glibc >= 2.35")

  def run(**env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("GLIBC_TUNABLES", "_C2CJAX_REEXEC", "C2CJAX_CPU_HUGEPAGES")}
    proc = subprocess.Popen([sys.executable, "-c", RESTART], env={**base, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    pid, tunables, huge_kib = out.split()
    assert int(pid) == proc.pid  # exec'd in place: the caller's pid, signals and all
    return tunables, int(huge_kib), runtime.HUGEPAGE_TUNABLE in tunables.split(":")

  if runtime.thp_mode() == "madvise":
    tunables, huge_kib, restarted = run()
    assert restarted, tunables
    assert huge_kib >= 128 << 10, huge_kib  # most of the 256 MiB in 2 MiB pages
  else:
    assert run()[2] is False
  tunables, huge_kib, restarted = run(C2CJAX_CPU_HUGEPAGES="0")
  assert not restarted and tunables == "None" and huge_kib < 128 << 10
