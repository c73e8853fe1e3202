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
