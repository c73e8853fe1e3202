"""The CPU matrix-vector kernel (c2cjax.kernels.matvec) against the einsum it replaces."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c2cjax.kernels import matvec
from c2cjax.models import lm as lm_lib
from tests import hf_tiny

needs_kernel = pytest.mark.skipif(
    jax.default_backend() != "cpu" or not (shutil.which("c++") or shutil.which("g++")),
    reason="the kernel is built with a C++ compiler, for the CPU backend")


def _uses_kernel(fn, *args) -> bool:
  return matvec.TARGET in jax.jit(fn).lower(*args).as_text()


@needs_kernel
@pytest.mark.parametrize("k,n", [(576, 1536), (37, 5), (1, 1), (65, 129), (1536, 576)])
@pytest.mark.parametrize("out_in", [False, True])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_matches_einsum(k, n, out_in, dtype):
  """fp32 or bfloat16 weights, fp32 x: the float64 product of the weights as stored."""
  assert matvec.available()
  kx, kw = jax.random.split(jax.random.PRNGKey(k * 1000 + n))
  x = jax.random.normal(kx, (1, 1, k))
  w = (jax.random.normal(kw, (n, k) if out_in else (k, n)) / np.sqrt(k)).astype(dtype)
  fn = lambda x, w: matvec.linear(x, w, out_in=out_in)
  target = matvec.TARGET_BF16 if dtype == jnp.bfloat16 else matvec.TARGET
  assert f"@{target}(" in jax.jit(fn).lower(x, w).as_text()
  want = np.einsum("bsi,oi->bso" if out_in else "bsi,io->bso", np.asarray(x, np.float64),
                   np.asarray(w, np.float64))
  np.testing.assert_allclose(np.asarray(jax.jit(fn)(x, w)), want, rtol=0, atol=2e-5)


@needs_kernel
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_of_a_stacked_weight_is_read_in_place(dtype):
  """``LayerOf(stacked, i)``: the kernel reads layer i of [L, K, N] / [L, N, K] in place (a
  traced index, as in the Decoder's loop); values and gradients equal those of
  ``stacked[i]``."""
  w = (jax.random.normal(jax.random.PRNGKey(0), (5, 67, 129)) / 8).astype(dtype)
  x = jax.random.normal(jax.random.PRNGKey(1), (1, 67))
  at = lambda x, w, i, out_in=False: matvec.linear(x, matvec.LayerOf(w, i), out_in=out_in)
  target = matvec.TARGET_BF16_AT if dtype == jnp.bfloat16 else matvec.TARGET_AT
  assert f"@{target}(" in jax.jit(at).lower(x, w, 2).as_text()
  wt = jnp.swapaxes(w, 1, 2)
  for i in range(5):
    want = np.asarray(x, np.float64) @ np.asarray(w[i], np.float64)
    np.testing.assert_allclose(np.asarray(jax.jit(at)(x, w, i)), want, atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(jax.jit(at, static_argnums=3)(x, wt, i, True)),
                               want, atol=2e-5, rtol=0)
  if dtype == jnp.float32:
    got = jax.grad(lambda x, w: at(x, w, 3).sum(), argnums=(0, 1))(x, w)
    want = jax.grad(lambda x, w: (x @ w[3]).sum(), argnums=(0, 1))(x, w)
    for g, r in zip(got, want):
      np.testing.assert_allclose(g, r, atol=1e-5, rtol=0)


@needs_kernel
def test_kernel_gradients_match_einsum():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 40))
  w = jax.random.normal(jax.random.PRNGKey(1), (40, 24)) / np.sqrt(40)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  got = jax.grad(loss(matvec.linear), argnums=(0, 1))(x, w)
  want = jax.grad(loss(lambda x, w: x @ w), argnums=(0, 1))(x, w)
  for g, r in zip(got, want):
    # The forward values differ by float summation order only.
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0, atol=1e-5)


def test_einsum_beyond_one_row_in_other_dtypes_or_when_off(monkeypatch):
  w = jnp.ones((8, 4))
  assert not _uses_kernel(matvec.linear, jnp.ones((2, 1, 8)), w)  # two rows: XLA's own
  assert not _uses_kernel(matvec.linear, jnp.ones((1, 1, 8), jnp.bfloat16),
                          w.astype(jnp.bfloat16))
  monkeypatch.setenv("C2CJAX_CPU_MATVEC", "0")
  assert not _uses_kernel(matvec.linear, jnp.ones((1, 1, 8)), w)
  np.testing.assert_array_equal(np.asarray(matvec.linear(jnp.ones((1, 1, 8)), w)), 8.0)


def test_lm_kernel_switch_must_be_a_bool():
  from c2cjax.models.tiny import tiny_lm
  lm = tiny_lm("qwen3", seed=0)
  with pytest.raises(TypeError, match="kernel=.*'off'"):
    lm.with_layout(kernel="off")
  assert lm.with_layout(kernel=False).kernel is False


def test_switch_value_that_is_neither_on_nor_off_is_an_error(monkeypatch):
  monkeypatch.setenv("C2CJAX_CPU_MATVEC", "maybe")
  with pytest.raises(ValueError, match="C2CJAX_CPU_MATVEC='maybe'"):
    matvec.linear(jnp.ones((1, 1, 8)), jnp.ones((8, 4)))


@needs_kernel
def test_foreign_file_under_the_cached_name_falls_back_with_a_warning(
    tmp_path, monkeypatch, caplog):
  monkeypatch.setenv("C2CJAX_CACHE", str(tmp_path))
  path = matvec.build()
  path.write_bytes(b"not a shared library")
  monkeypatch.setattr(matvec, "available", matvec.available.__wrapped__)  # uncached
  with caplog.at_level("WARNING", logger=matvec.__name__):
    assert not matvec.available()
  assert path.name in caplog.text and "delete it to rebuild" in caplog.text


def test_build_names_a_broken_compiler(tmp_path):
  with pytest.raises(RuntimeError, match="(?s)could not compile.*no-such-c"):
    matvec.build(compiler=str(tmp_path / "no-such-c++"), folder=tmp_path)


def test_build_names_an_unwritable_cache_folder(tmp_path):
  (tmp_path / "a-file").write_text("")
  with pytest.raises(RuntimeError, match="a-file"):
    matvec.build(compiler="c++", folder=tmp_path / "a-file" / "kernels")


def _cpu_flags() -> set[str]:
  try:
    with open("/proc/cpuinfo") as f:
      return {w for line in f if line.startswith("flags") for w in line.split(":")[1].split()}
  except OSError:
    return set()


# Each of the source's paths, built for this machine where it can run here.
_PATHS = {"portable": (), "avx2": ("-mavx2", "-mfma"), "avx512": ("-mavx512f", "-mfma")}
_NEEDS = {"portable": set(), "avx2": {"avx2", "fma"}, "avx512": {"avx512f", "fma"}}


@needs_kernel
@pytest.mark.parametrize("path", sorted(_PATHS))
def test_every_simd_path_matches_float64(path, tmp_path):
  """The AVX-512, AVX2 and portable loops (with their tails), each against float64."""
  import ctypes
  import platform
  if path != "portable" and (platform.machine() not in ("x86_64", "AMD64")
                             or not _NEEDS[path] <= _cpu_flags()):
    pytest.skip(f"this CPU cannot run the {path} build")
  lib = ctypes.CDLL(str(matvec.build(folder=tmp_path, arch=_PATHS[path])))
  targets = {jnp.float32: f"c2cjax_test_{path}_f32", jnp.bfloat16: f"c2cjax_test_{path}_bf16"}
  jax.ffi.register_ffi_target(targets[jnp.float32], jax.ffi.pycapsule(lib.C2cjaxCpuMatVec),
                              platform="cpu")
  jax.ffi.register_ffi_target(targets[jnp.bfloat16],
                              jax.ffi.pycapsule(lib.C2cjaxCpuMatVecBf16), platform="cpu")
  for k, n in [(576, 192), (37, 5), (1, 1), (67, 129), (130, 40)]:
    for out_in in (False, True):
      for dtype in (jnp.float32, jnp.bfloat16):
        kx, kw = jax.random.split(jax.random.PRNGKey(k * 1000 + n))
        x = jax.random.normal(kx, (1, k))
        w = (jax.random.normal(kw, (n, k) if out_in else (k, n)) / np.sqrt(k)).astype(dtype)
        got = jax.ffi.ffi_call(targets[dtype], jax.ShapeDtypeStruct((1, n), jnp.float32))(
            x, w, out_in=out_in, blocks_per_thread=np.int64(1))
        want = np.einsum("bi,oi->bo" if out_in else "bi,io->bo", np.asarray(x, np.float64),
                         np.asarray(w, np.float64))
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-5,
                                   err_msg=f"{path} k={k} n={n} out_in={out_in} {dtype}")


@needs_kernel
def test_build_is_cached_per_source_and_machine(tmp_path):
  first = matvec.build(folder=tmp_path)
  stamp = first.stat().st_mtime_ns
  assert matvec.build(folder=tmp_path) == first and first.stat().st_mtime_ns == stamp
  assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp files left


@needs_kernel
@pytest.mark.parametrize("kind", hf_tiny.KINDS)
def test_batch1_decode_with_kernel_matches_transformers(kind, tmp_path_factory):
  """One decode step at batch 1 (the kernel's case) against transformers' full forward over
  prompt + token. Per-layer params: every projection and the LM head use the kernel.
  Stacked params: a loop over layers whose 7 projections (one loop body) read the stacked
  weights in place, and the LM head. ``kernel=False``: none."""
  torch = pytest.importorskip("torch")
  _, hf, stacked = hf_tiny.loaded(kind, tmp_path_factory)
  ids = np.random.default_rng(3).integers(3, 128, size=(1, 11)).astype(np.int64)
  with torch.no_grad():
    ref = hf(torch.from_numpy(ids)).logits.numpy()[:, -1]
  flat = stacked.with_layout(scan_layers=False)
  off = flat.with_layout(kernel=False)  # XLA's products; a static field, so its own traces
  assert off.module != flat.module and not off.kernel and off.with_layout().kernel is False
  stacked_off = stacked.with_layout(kernel=False)
  for lm, calls, calls_at in ((stacked, 1, 7), (flat, 7 * stacked.config.num_layers + 1, 0),
                              (off, 0, 0), (stacked_off, 0, 0)):
    step = lambda p, t, c, lm=lm: lm_lib.forward(lm.module, p, t, c)
    _, cache = lm_lib.forward(lm.module, lm.params, jnp.asarray(ids[:, :-1], jnp.int32),
                              lm.init_cache(1, 16))
    last = jnp.asarray(ids[:, -1:], jnp.int32)
    hlo = jax.jit(step).lower(lm.params, last, cache).as_text()
    assert hlo.count(f"@{matvec.TARGET}(") == calls
    assert hlo.count(f"@{matvec.TARGET_AT}(") == calls_at
    logits, _ = jax.jit(step)(lm.params, last, cache)
    np.testing.assert_allclose(np.asarray(logits[:, -1]), ref, atol=1e-4, rtol=0)


@needs_kernel
@pytest.mark.parametrize("kind", ["llama3", "gemma3"])  # untied head; tied head, soft cap
def test_bf16_stored_weights_compute_in_fp32(kind, tmp_path_factory):
  """``with_layout(weight_dtype=bfloat16)``: the matrices stored in bf16, norms and
  activations fp32. Prefill (XLA's products) and batch-1 decode (the bf16 kernel in every
  projection and the LM head; per layer and stacked) equal the fp32 model whose weights
  were rounded to bf16."""
  _, _, stacked = hf_tiny.loaded(kind, tmp_path_factory)
  flat = stacked.with_layout(scan_layers=False)
  narrow = flat.with_layout(weight_dtype=jnp.bfloat16)
  dtypes = {jax.tree_util.keystr(k): a.dtype
            for k, a in jax.tree_util.tree_leaves_with_path(narrow.params)}
  assert dtypes["['layers_0']['mlp']['down']"] == jnp.bfloat16
  assert dtypes["['embed']"] == jnp.bfloat16
  assert dtypes["['layers_0']['attn_norm']['scale']"] == jnp.float32
  assert narrow.with_layout(kernel=False).weight_dtype == jnp.bfloat16  # kept
  rounded = jax.tree.map(lambda a, b: b.astype(a.dtype), flat.params, narrow.params)
  ref_lm = lm_lib.LM(flat.config, rounded, scan_layers=False, kernel=False)
  ids = jnp.asarray(np.random.default_rng(4).integers(3, 128, size=(1, 9)), jnp.int32)
  narrow_stacked = stacked.with_layout(weight_dtype=jnp.bfloat16)  # 7 in-place + LM head
  outs = []
  for lm, calls, calls_at in ((narrow, 7 * flat.config.num_layers + 1, 0),
                              (narrow_stacked, 1, 7), (ref_lm, 0, 0)):
    logits, cache = lm_lib.forward(lm.module, lm.params, ids[:, :-1], lm.init_cache(1, 12))
    step = lambda p, t, c, lm=lm: lm_lib.forward(lm.module, p, t, c)
    hlo = jax.jit(step).lower(lm.params, ids[:, -1:], cache).as_text()
    assert hlo.count(f"@{matvec.TARGET_BF16}(") == calls
    assert hlo.count(f"@{matvec.TARGET_BF16_AT}(") == calls_at
    last, _ = jax.jit(step)(lm.params, ids[:, -1:], cache)
    assert logits.dtype == last.dtype == jnp.float32
    outs.append((np.asarray(logits), np.asarray(last)))
  for got in outs[:-1]:
    for g, want in zip(got, outs[-1]):
      np.testing.assert_allclose(g, want, atol=1e-4, rtol=0)
  for bad in (jnp.float16, "bf16"):
    with pytest.raises(ValueError, match="weight_dtype.*must be float32 or bfloat16"):
      flat.with_layout(weight_dtype=bad)
