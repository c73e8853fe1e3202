"""The einsum reference equals a float64 loop; the chunked (online-softmax), the causal
(query blocks over a prefix of the cache) and decode's appended attention equal the einsum
reference (fp32, 1e-5); on an NVIDIA GPU, cuDNN's
fused attention does too (bf16 against fp32, 3e-2; ``benchmarks/device.sh`` runs this
file there)."""

import dataclasses

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from c2cjax.models import attention
from c2cjax.models import LM
from c2cjax.models.tiny import tiny_lm


def _mask(b, s, t, start, write_at, window=None):
  slots = np.arange(t)
  q = write_at + np.arange(s)
  m = (slots[None, None] >= start[:, None, None]) & (slots[None, None] <= q[None, :, None])
  if window:
    m &= slots[None, None] > q[None, :, None] - window
  return m


def _attention_float64(q, k, v, mask, scale, softcap):
  """Per query row and head, in float64: softmax over the visible slots (a row that sees
  no slot averages every slot's value uniformly, as the kernels do)."""
  q, k, v, mask = (np.asarray(a, np.float64) if a.dtype != bool else np.asarray(a)
                   for a in (q, k, v, mask))
  b, s, kh, g, h = q.shape
  out = np.zeros((b, s, kh, g, h))
  for i in range(b):
    for j in range(s):
      seen = mask[i, j]
      for c in range(kh):
        for e in range(g):
          logits = k[i, c] @ q[i, j, c, e] * scale
          if softcap:
            logits = np.tanh(logits / softcap) * softcap
          p = np.where(seen, np.exp(logits - logits[seen].max()), 0) if seen.any() else (
              np.ones_like(logits))
          out[i, j, c, e] = p @ v[i, c] / p.sum()
  return out.reshape(b, s, kh * g, h)


@pytest.mark.parametrize("softcap,window,group", [
    (None, None, 2), (None, 5, 3), (20.0, None, 1), (30.0, 4, 2)])
def test_einsum_attention_equals_a_float64_loop(softcap, window, group):
  b, s, k, h, t, write_at = 3, 12, 2, 16, 21, 6
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.normal(size=(b, s, k, group, h)), jnp.float32)
  kc = jnp.asarray(rng.normal(size=(b, k, t, h)), jnp.float32)
  vc = jnp.asarray(rng.normal(size=(b, k, t, h)), jnp.float32)
  mask = jnp.asarray(_mask(b, s, t, np.array([0, 3, 9]), write_at, window))
  got = attention.einsum_attention(q, kc, vc, mask, scale=h ** -0.5, softcap=softcap)
  want = _attention_float64(q, kc, vc, mask, h ** -0.5, softcap)
  np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)


def _assert_einsum_gradients(kernel, qkv, mask, w, kw):
  """Gradients of ``sum(kernel(q, k, v) * w)`` in q, k, v equal the einsum reference's."""
  loss = lambda fn: lambda *a: jnp.sum(fn(*a, mask, **kw) * w)
  g_ref = jax.grad(loss(attention.einsum_attention), argnums=(0, 1, 2))(*qkv)
  g_got = jax.grad(loss(kernel), argnums=(0, 1, 2))(*qkv)
  for a, r in zip(g_got, g_ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("softcap,window,group,block", [
    (None, None, 2, 8), (None, 5, 3, 7), (20.0, None, 1, 16), (30.0, 4, 2, 5)])
def test_chunked_equals_einsum_and_gradients(softcap, window, group, block):
  b, s, k, h, t, write_at = 3, 12, 2, 16, 21, 6
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(b, s, k, group, h)), jnp.float32)
  kc = jnp.asarray(rng.normal(size=(b, k, t, h)), jnp.float32)
  vc = jnp.asarray(rng.normal(size=(b, k, t, h)), jnp.float32)
  start = np.array([0, 3, 9])  # left padding; row 2's first queries see nothing
  mask = jnp.asarray(_mask(b, s, t, start, write_at, window))
  kw = dict(scale=h ** -0.5, softcap=softcap)
  ref = attention.einsum_attention(q, kc, vc, mask, **kw)
  got = attention.chunked_attention(q, kc, vc, mask, block=block, **kw)
  rows = np.asarray(mask.any(-1))  # fully masked rows only ever feed padding
  np.testing.assert_allclose(np.asarray(got)[rows], np.asarray(ref)[rows], atol=1e-5, rtol=1e-5)
  assert np.isfinite(np.asarray(got)).all()

  w = jnp.asarray(rng.normal(size=ref.shape), jnp.float32) * jnp.asarray(rows)[..., None, None]
  _assert_einsum_gradients(lambda *a, **x: attention.chunked_attention(*a, block=block, **x),
                           (q, kc, vc), mask, w, kw)


def test_auto_picks_einsum_for_decode_and_short_sequences(monkeypatch):
  calls = []
  monkeypatch.setattr(attention, "chunked_attention", lambda *a, **k: calls.append("c") or 0)
  monkeypatch.setattr(attention, "einsum_attention", lambda *a, **k: calls.append("e") or 0)
  q, kv = jnp.zeros((1, 1, 1, 1, 4)), jnp.zeros((1, 1, 64, 4))
  attention.attend(q, kv, kv, jnp.ones((1, 1, 64), bool), scale=1.0, block=16)  # decode
  q8 = jnp.zeros((1, 8, 1, 1, 4))
  attention.attend(q8, kv[:, :, :16], kv[:, :, :16], jnp.ones((1, 8, 16), bool), scale=1.0,
                   block=16)
  attention.attend(q8, kv, kv, jnp.ones((1, 8, 64), bool), scale=1.0, block=16)
  assert calls == ["e", "e", "c"]
  with pytest.raises(ValueError, match="unknown attention implementation"):
    attention.attend(q8, kv, kv, jnp.ones((1, 8, 64), bool), scale=1.0, implementation="x")



@pytest.mark.parametrize("s,softcap,window,group", [
    (1, None, None, 2), (1, 30.0, 4, 3), (3, None, 5, 1), (3, 20.0, None, 2)])
def test_appended_equals_einsum_over_the_written_cache(s, softcap, window, group):
  """Decode's form (the cache as it was + the new rows, written afterwards) equals the
  reference over the cache with the new rows written in; slots from ``write_at`` on hold
  stale values that must not be read, and holes inside a sequence stay unread."""
  b, k, h, t, write_at = 3, 2, 8, 19, 11
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(b, s, k, group, h)), jnp.float32)
  kc = jnp.asarray(rng.normal(size=(b, k, t, h)), jnp.float32)  # stale beyond write_at
  vc = jnp.asarray(rng.normal(size=(b, k, t, h)), jnp.float32)
  kn = jnp.asarray(rng.normal(size=(b, k, s, h)), jnp.float32)
  vn = jnp.asarray(rng.normal(size=(b, k, s, h)), jnp.float32)
  mask = _mask(b, s, t, np.array([0, 4, 9]), write_at, window)
  mask[1, :, 6] = False  # a hole
  mask = jnp.asarray(mask)
  kw = dict(scale=h ** -0.5, softcap=softcap)
  written = lambda c, n: jax.lax.dynamic_update_slice_in_dim(c, n, write_at, axis=2)
  ref = attention.einsum_attention(q, written(kc, kn), written(vc, vn), mask, **kw)
  got = jax.jit(lambda *a: attention.attend_appended(*a, **kw))(
      q, kc, vc, kn, vn, mask, jnp.int32(write_at))
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)


def _cache_writes(jaxpr) -> dict[int, int]:
  """Ranks of the float arrays ``dynamic_update_slice`` writes into, counted, through
  every sub-jaxpr (the layer scan's body)."""
  counts = {}

  def walk(jp):
    for eqn in jp.eqns:
      if eqn.primitive.name == "dynamic_update_slice":
        aval = eqn.invars[0].aval
        if jnp.issubdtype(aval.dtype, jnp.floating):
          counts[aval.ndim] = counts.get(aval.ndim, 0) + 1
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  return counts


@pytest.mark.parametrize("kind", ["gemma3", "qwen2"])
def test_decode_writing_rows_after_the_layers_equals_writing_in_each(kind, monkeypatch):
  """Whole models: cached decode steps with the new rows written once after all layers
  (the default for one new token) give the logits and cache of each layer writing its
  slice first; ``keep`` (C2C's kept slots) still takes the in-layer path."""
  from c2cjax.models import layers
  lm = tiny_lm(kind, seed=0)
  ids = np.random.default_rng(3).integers(3, 128, (2, 9)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :3] = 0
  outs, writes = {}, {}
  for name in ("append", "write"):
    if name == "write":
      monkeypatch.setattr(layers, "appends", lambda n, keep: False)
    step = jax.jit(lambda p, t, c: lm.module_apply(p, t, c))  # a new program per variant
    _, cache = lm.apply(lm.params, ids, lm.init_cache(2, 16), attention_mask=mask)
    writes[name] = _cache_writes(jax.make_jaxpr(lm.module_apply)(lm.params, ids[:, :1], cache))
    got = []
    for t in range(4):
      logits, cache = step(lm.params, ids[:, t:t + 1], cache)
      got.append(np.asarray(logits))
    outs[name] = got + [np.asarray(cache.k[:, :, :, :13]), np.asarray(cache.v[:, :, :, :13])]
  # k and v written once into the whole [L, B, K, T, H] cache, against into a layer's slice
  assert writes == {"append": {5: 2}, "write": {4: 2}}, writes
  for i, (a, b) in enumerate(zip(outs["append"], outs["write"])):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=f"output {i}")

def _with(lm: LM, **kw) -> LM:
  return LM(dataclasses.replace(lm.config, **kw), lm.params, dtype=lm.dtype)


@pytest.mark.parametrize("impl,block", [("chunked", 5), ("causal", 6)])
@pytest.mark.parametrize("kind", ["gemma3", "qwen3", "llama3"])
def test_model_with_chunked_attention_equals_einsum(kind, impl, block):
  """Left padding, sliding windows (Gemma 3: window 8 < 20 tokens), GQA, cached decode
  and C2C's ``keep`` through whole models; the chunked kernel over key blocks of 5, the
  causal one over query blocks of 6 (a prefill, then a rerun behind nothing kept)."""
  ref = _with(tiny_lm(kind, seed=0), attention="einsum")
  chunk = _with(ref, attention=impl, attention_block=block)
  rng = np.random.default_rng(1)
  ids = rng.integers(3, 128, (2, 20)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, :6] = 0
  keep = np.zeros((2, 24), bool)
  keep[:, 2:9] = True
  outs = {}
  for name, lm in (("ref", ref), ("chunk", chunk)):
    logits, cache = lm.apply(lm.params, ids, lm.init_cache(2, 24), attention_mask=mask)
    steps = []
    for t in range(3):  # cached decode, one token at a time
      step, cache = lm.apply(lm.params, ids[:, t:t + 1], cache)
      steps.append(step)
    # valid slots only (before apply donates the cache): padding slots hold garbage
    k = np.concatenate([np.asarray(cache.k[:, 0, :, :23]), np.asarray(cache.k[:, 1, :, 6:23])], 2)
    # a C2C-style rerun over the prompt on a cache, keeping slots 2..8
    rerun, _ = lm.apply(lm.params, ids, cache.replace(end=jnp.int32(0)), keep=jnp.asarray(keep))
    outs[name] = [np.asarray(x) for x in (logits, *steps, rerun)] + [k]
  real = mask.astype(bool)
  for i, (a, b) in enumerate(zip(outs["chunk"], outs["ref"])):
    if a.ndim == 3 and a.shape[1] == 20:
      a, b = a[real], b[real]
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=f"output {i}")


def test_remat_policies_same_gradients():
  """Every remat policy of the config gives the no-remat gradients; a typo is an error."""
  base = tiny_lm("qwen3", seed=0)
  ids = np.random.default_rng(2).integers(3, 128, (2, 10)).astype(np.int32)
  w = jnp.asarray(np.random.default_rng(3).normal(size=(2, 10, 128)), jnp.float32)

  def grads(remat):
    lm = LM(base.config, base.params, remat=remat)
    f = lambda p: jnp.sum(lm.module_apply(p, ids, lm.init_cache(2, 10))[0] * w)
    return jax.jit(jax.grad(f))(base.params)

  ref = grads("none")
  # 1e-4 of each leaf's scale (the suite's fp32 parity bound). On CPU they agree to 1e-6
  # absolute; on an H200 fp32 recomputation fuses differently (54 of 8192 elements off by
  # up to 1.9e-5, leaves of scale 0.4-66). A wrong policy is off by the scale itself.
  close = lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=max(1e-6, 1e-4 * float(np.abs(b).max())))
  for policy in ("full", "dots_saveable", True):
    jax.tree.map(close, grads(policy), ref)
  with pytest.raises(ValueError, match="unknown remat policy"):
    grads("dots")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU "
                    "(benchmarks/device.sh runs this file there)")
@pytest.mark.parametrize("s,t,window,group", [(128, 128, None, 2), (64, 192, 48, 4)])
def test_cudnn_equals_einsum_and_gradients_bf16(s, t, window, group):
  """cuDNN's fused attention (bf16) against the einsum reference in fp32 on the same
  bf16-rounded inputs: left padding (rows that see nothing: finite, gradients too),
  sliding window,
  GQA, a prefill after cached slots (S < T), and the gradients to q, k, v."""
  b, k, h = 2, 2, 64
  write_at = t - s
  rng = np.random.default_rng(3)
  bf = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
  q, kc, vc = bf(b, s, k, group, h), bf(b, k, t, h), bf(b, k, t, h)
  mask = jnp.asarray(_mask(b, s, t, np.array([0, write_at + 5]), write_at, window))
  scale = h ** -0.5
  f32 = lambda x: x.astype(jnp.float32)
  ref = attention.einsum_attention(f32(q), f32(kc), f32(vc), mask, scale=scale)
  got = jax.jit(lambda *a: attention.cudnn_attention(*a, mask, scale=scale))(q, kc, vc)
  assert got.dtype == jnp.bfloat16
  got = np.asarray(got, np.float32)
  # rows that see no slot: the uniform average, as the einsum reference gives
  np.testing.assert_allclose(got, np.asarray(ref), atol=3e-2, rtol=3e-2)
  rows = np.asarray(mask.any(-1))
  assert not rows.all()

  w = jnp.asarray(rng.normal(size=ref.shape), jnp.float32) * jnp.asarray(rows)[..., None, None]
  g_ref = jax.grad(lambda *a: jnp.sum(attention.einsum_attention(*a, mask, scale=scale) * w),
                   argnums=(0, 1, 2))(f32(q), f32(kc), f32(vc))
  g_got = jax.jit(jax.grad(
      lambda *a: jnp.sum(f32(attention.cudnn_attention(*a, mask, scale=scale)) * w),
      argnums=(0, 1, 2)))(q, kc, vc)
  for name, a, r in zip("qkv", g_got, g_ref):
    a, r = np.asarray(a, np.float32), np.asarray(r)
    assert np.isfinite(a).all(), name
    scale_r = np.abs(r).max()
    np.testing.assert_allclose(a, r, atol=3e-2 * scale_r, rtol=0, err_msg=f"d{name}")


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs an NVIDIA GPU")
def test_auto_picks_cudnn_on_gpu_for_long_bf16_prefill(monkeypatch):
  calls = []
  monkeypatch.setattr(attention, "cudnn_attention", lambda *a, **k: calls.append("d") or 0)
  q, kv = jnp.zeros((1, 64, 1, 2, 64), jnp.bfloat16), jnp.zeros((1, 1, 64, 64), jnp.bfloat16)
  attention.attend(q, kv, kv, jnp.ones((1, 64, 64), bool), scale=1.0, block=16)
  assert calls == ["d"]


@pytest.mark.parametrize("softcap,window,group,q_block,write_at,t", [
    (None, None, 2, 4, 0, 12), (None, 5, 3, 5, 6, 21), (20.0, None, 1, 3, 9, 21),
    (30.0, 4, 2, 12, 0, 30)])
def test_causal_equals_einsum_and_gradients(softcap, window, group, q_block, write_at, t):
  """The causal kernel reads a prefix of the cache per query block: the same outputs and
  gradients as the reference for a prefill into a cache of its own length (write_at 0,
  T = S), behind a prefix (write_at > 0) and into a longer cache, with left padding (rows
  that see nothing keep the reference's uniform average), windows and soft caps."""
  b, s, k, h = 3, 12, 2, 16
  rng = np.random.default_rng(4)
  q = jnp.asarray(rng.normal(size=(b, s, k, group, h)), jnp.float32)
  kc = jnp.asarray(rng.normal(size=(b, k, t, h)), jnp.float32)
  vc = jnp.asarray(rng.normal(size=(b, k, t, h)), jnp.float32)
  start = np.array([0, 3, write_at + 5])  # row 2's first five queries see nothing
  mask = jnp.asarray(_mask(b, s, t, start, write_at, window))
  kw = dict(scale=h ** -0.5, softcap=softcap)
  ref = attention.einsum_attention(q, kc, vc, mask, **kw)
  got = attention.attend(q, kc, vc, mask, implementation="causal", block=q_block, causal=True,
                         **kw)
  np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5)

  w = jnp.asarray(rng.normal(size=ref.shape), jnp.float32)
  _assert_einsum_gradients(
      lambda *a, **x: attention.causal_attention(*a, q_block=q_block, **x), (q, kc, vc), mask,
      w, kw)
  with pytest.raises(ValueError, match="needs a causal mask"):  # named without causal=True
    attention.attend(q, kc, vc, mask, implementation="causal", block=q_block, **kw)


def test_auto_picks_causal_only_for_long_causal_prefills(monkeypatch):
  """``auto``: the causal kernel for a causal prefill of 255+ tokens (8 x 256's ``lm.prefill``)
  into a cache about its length; the einsum for two query blocks (training's pass 1 at the
  original code's shape), non-causal masks, decode and a long prefix (pass 2)."""
  calls = []
  monkeypatch.setattr(attention, "causal_attention", lambda *a, **k: calls.append("k") or 0)
  monkeypatch.setattr(attention, "einsum_attention", lambda *a, **k: calls.append("e") or 0)
  n = 4 * attention.CAUSAL_Q_BLOCK - 1
  for s, t, causal in ((n, n, True), (n, n, False), (128, 128, True), (1, n, True),
                       (n, 2 * n, True)):
    kv = jnp.zeros((1, 1, t, 4))
    attention.attend(jnp.zeros((1, s, 1, 1, 4)), kv, kv, jnp.ones((1, s, t), bool), scale=1.0,
                     causal=causal)
  assert calls == ["k", "e", "e", "e", "e"]
