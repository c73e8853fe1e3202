"""Attention kernels for :class:`c2cjax.models.layers.Attention`: einsum (reference),
chunked (flash-style online softmax over key blocks) and cuDNN.

All take grouped queries ``q [B, S, K, G, H]``, the layer's cache ``k, v [B, K, T, H]``
(HF layout) and a ``mask [B, S, T]`` (True: may attend), and return ``[B, S, K * G, H]``
in the query dtype. Axis letters as in ``layers.py``; ``C`` is a key block.

``einsum`` materialises the ``[B, K, G, S, T]`` fp32 logits: fastest for decode (S = 1)
and short sequences, the reference in tests. ``chunked`` scans over key blocks of
``block`` slots with a running max and sum (FlashAttention's online softmax), so only
``[B, K, G, S, C]`` logits live at a time; under ``jax.grad`` the block body is
rematerialised, so the backward pass does not keep every block's probabilities either.
``cudnn`` is ``jax.nn.dot_product_attention(implementation="cudnn")`` (fused
flash attention on NVIDIA GPUs, bf16/fp16 only, no soft cap); where cuDNN refuses the
shapes it falls back to ``chunked``. ``causal`` is the einsum over, for each block of
queries, only the keys a causal mask can show it: about half the products of a prefill
(the masked upper triangle is never computed), the same values. ``auto`` picks: einsum for
decode; ``causal`` for causal masks (the models' own) of 255+ queries over a cache less than
a query block longer than the queries, within one key block; einsum for other sequences
within one key block; cuDNN on GPUs where it applies; else chunked.

Fully masked query rows (left padding) get a uniform average in every kernel, as the
einsum reference does; their outputs only ever feed padding slots.

:func:`attend_appended` is decode's form: the cache as it was before this step plus the
step's new keys/values, which the caller writes afterwards (one write for all layers),
so no layer copies its cache slice to write into it.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp

NEG_INF = -2.3819763e38  # large negative that stays finite in bf16 / fp32
IMPLEMENTATIONS = ("auto", "einsum", "causal", "chunked", "cudnn")
# Queries per block of the ``causal`` kernel under ``auto``: at SmolLM2-135M's 8 x 256
# prefill one layer's einsum attention took 24-27 ms against 8.8-9.6 ms for torch's causal
# SDPA on an AMD EPYC Zen 4, most of it the masked triangle (RESULTS.md, twenty-sixth session).
CAUSAL_Q_BLOCK = 64


def check_implementation(name: str) -> str:
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {name!r}; choose from {IMPLEMENTATIONS}")
  return name


def _softcap(logits, cap):
  return jnp.tanh(logits / cap) * cap if cap else logits


def _query_rows(q):
  """[B, S, K, G, H] queries -> [B, K, G * S, H]: one matrix of rows per (batch, kv head)."""
  b, s, kh, g, h = q.shape
  return q.transpose(0, 2, 3, 1, 4).reshape(b, kh, g * s, h)


def _heads_out(rows, s: int):
  """[B, K, G * S, H] outputs -> [B, S, K * G, H]."""
  b, kh, x, h = rows.shape
  g = x // s
  return rows.reshape(b, kh, g, s, h).transpose(0, 3, 1, 2, 4).reshape(b, s, kh * g, h)


def einsum_attention(q, k, v, mask, *, scale: float, softcap: float | None = None):
  """Reference: full ``[B, K, G, S, T]`` fp32 logits, probabilities in the query dtype.

  The queries are laid out as ``[B, K, G * S, H]`` first, so each (batch, kv head) is one
  matrix product with contiguous ``[G * S, T]`` logits. Contracting ``[B, S, K, G, H]``
  directly left XLA:CPU copying and striding through the logits: on SmolLM2-135M's
  8 x 256 prefill that form's attention took about 3x as long, 40% of the prefill
  (benchmarks/RESULTS.md, eighteenth session). The values are the same.
  """
  b, s, kh, g, h = q.shape
  t = k.shape[2]
  logits = jnp.einsum("bkxh,bkth->bkxt", _query_rows(q), k.astype(q.dtype),
                      preferred_element_type=jnp.float32) * scale
  logits = _softcap(logits, softcap).reshape(b, kh, g, s, t)
  logits = jnp.where(mask[:, None, None], logits, NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype).reshape(b, kh, g * s, t)
  return _heads_out(jnp.einsum("bkxt,bkth->bkxh", probs, v.astype(q.dtype)), s)


def causal_attention(q, k, v, mask, *, scale: float, softcap: float | None = None,
                     q_block: int = CAUSAL_Q_BLOCK):
  """:func:`einsum_attention` reading, for each block of ``q_block`` queries, only the
  keys a causal mask can show it.

  For causal masks only, as the models build them: query ``i`` sits at cache slot
  ``write_at + i`` with ``write_at + S <= T`` and sees no slot after its own. Then every
  slot the queries ``[lo, hi)`` may see lies before ``T - S + hi``, whatever ``write_at``
  is, so each block reads a static prefix of the cache: the whole triangle is skipped for
  a prefill into a cache of its own length, the part after the prompt for a longer one.
  Rows that see no slot (left padding) get the uniform average over all ``T`` slots, as
  the reference gives them. Same values as :func:`einsum_attention` (fp32, 1e-5).
  """
  b, s, kh, g, h = q.shape
  t = k.shape[2]
  outs = []
  for lo in range(0, s, q_block):
    hi = min(s, lo + q_block)
    n = min(t, t - s + hi)
    outs.append(einsum_attention(q[:, lo:hi], k[:, :, :n], v[:, :, :n], mask[:, lo:hi, :n],
                                 scale=scale, softcap=softcap))
  out = jnp.concatenate(outs, axis=1)  # [B, S, K * G, H]
  uniform = jnp.repeat(jnp.mean(v.astype(q.dtype), axis=2), g, axis=1)  # [B, K * G, H]
  seen = jnp.any(mask, axis=-1)[:, :, None, None]
  return jnp.where(seen, out, uniform[:, None].astype(out.dtype))


def chunked_attention(q, k, v, mask, *, scale: float, softcap: float | None = None,
                      block: int = 512):
  """Online softmax over key blocks of ``block`` slots (fp32 running max/sum/output), with
  the queries laid out as ``[B, K, G * S, H]`` as in :func:`einsum_attention`."""
  b, s, kh, g, h = q.shape
  t = k.shape[2]
  nb = -(-t // block)
  pad = nb * block - t
  if pad:  # padded slots are masked out
    k = jnp.pad(k, ((0, 0), (0, 0), (0, pad), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, 0), (0, pad), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad)))
  kb = k.reshape(b, kh, nb, block, h).transpose(2, 0, 1, 3, 4)  # [nb, B, K, C, H]
  vb = v.reshape(b, kh, nb, block, h).transpose(2, 0, 1, 3, 4)
  mb = mask.reshape(b, s, nb, block).transpose(2, 0, 1, 3)  # [nb, B, S, C]
  rows = _query_rows(q)  # x = (g, s)

  @jax.checkpoint  # the backward pass recomputes a block's probabilities, never stores all
  def body(carry, xs):
    m, l, acc = carry  # [B, K, X], [B, K, X], [B, K, X, H] fp32
    kc, vc, mc = xs
    logits = jnp.einsum("bkxh,bkch->bkxc", rows, kc.astype(q.dtype),
                        preferred_element_type=jnp.float32) * scale
    logits = _softcap(logits, softcap).reshape(b, kh, g, s, block)
    logits = jnp.where(mc[:, None, None], logits, NEG_INF).reshape(b, kh, g * s, block)
    m_new = jnp.maximum(m, jnp.max(logits, axis=-1))
    p = jnp.exp(logits - m_new[..., None])
    corr = jnp.exp(m - m_new)
    l = l * corr + jnp.sum(p, axis=-1)
    pv = jnp.einsum("bkxc,bkch->bkxh", p, vc.astype(jnp.float32))
    return (m_new, l, acc * corr[..., None] + pv), None

  x = g * s
  init = (jnp.full((b, kh, x), NEG_INF, jnp.float32), jnp.zeros((b, kh, x), jnp.float32),
          jnp.zeros((b, kh, x, h), jnp.float32))
  (_, l, acc), _ = jax.lax.scan(body, init, (kb, vb, mb))
  # l >= 1: the block holding the max contributes exp(0)
  return _heads_out(acc / l[..., None], s).astype(q.dtype)


def cudnn_attention(q, k, v, mask, *, scale: float):
  """``jax.nn.dot_product_attention`` with cuDNN (raises where cuDNN does not apply).

  A query row that sees no slot (left padding) is given every slot and a zero query, so
  its logits are all equal: the uniform average the other kernels give. Left to cuDNN,
  such a row's output is finite but its gradient to ``q`` is NaN (H200, jax 0.11.2), and
  the NaN reaches the weights through the projections although the row feeds only
  padding.
  """
  b, s, kh, g, h = q.shape
  sees = mask.any(-1)  # [B, S]
  q = jnp.where(sees[:, :, None, None, None], q, jnp.zeros((), q.dtype))
  mask = mask | ~sees[..., None]
  return jax.nn.dot_product_attention(
      q.reshape(b, s, kh * g, h), k.transpose(0, 2, 1, 3).astype(q.dtype),
      v.transpose(0, 2, 1, 3).astype(q.dtype), mask=mask[:, None], scale=scale,
      implementation="cudnn")


def _cudnn_applies(q, softcap) -> bool:
  return (jax.default_backend() == "gpu" and not softcap
          and q.dtype in (jnp.bfloat16, jnp.float16))


def attend_appended(q, k, v, k_new, v_new, mask, write_at, *, scale: float,
                    softcap: float | None = None):
  """Attention over the cache before this step plus the step's own keys/values.

  The same values as :func:`einsum_attention` over the cache with ``k_new``/``v_new``
  written at slots ``[write_at, write_at + S)``, without that write: decode (S = 1) reads
  each layer's cache in place and the caller writes every layer's new rows at once
  (``layers.Decoder``). At S = 1 the contractions are products and sums rather than
  dots: on CPU, XLA fuses them with the read of the layer's cache slice, where a dot
  first copies the slice (benchmarks/RESULTS.md, seventeenth session).

  Args:
    q: [B, S, K, G, H] grouped queries.
    k, v: [B, K, T, H] the layer's cache before this step (slots from ``write_at`` on are
      not read).
    k_new, v_new: [B, K, S, H] the new tokens' keys/values (slots ``write_at + s``).
    mask: [B, S, T] bool over the cache's slots, the new tokens' own slots included.
    write_at: [] int32, the first new token's slot.
  Returns:
    [B, S, K * G, H] in the query dtype. A fully masked query row averages all T + S
    values uniformly (its output only ever feeds padding).
  """
  b, s, kh, g, h = q.shape
  t = k.shape[2]
  old = mask & (jnp.arange(t) < write_at)[None, None, :]  # [B, S, T]
  own = jax.lax.dynamic_slice_in_dim(mask, write_at, s, axis=2)  # [B, S, S]
  k, v = k.astype(q.dtype), v.astype(q.dtype)
  k_new, v_new = k_new.astype(q.dtype), v_new.astype(q.dtype)
  f32 = jnp.float32
  if s == 1:
    qs = q[:, 0].astype(f32)  # [B, K, G, H]
    logits = jnp.sum(qs[:, :, :, None, :] * k[:, :, None].astype(f32), axis=-1)  # [B,K,G,T]
    logits_new = jnp.sum(qs * k_new[:, :, None, 0].astype(f32), axis=-1)  # [B, K, G]
    logits = jnp.concatenate([logits, logits_new[..., None]], axis=-1)[:, :, :, None] * scale
  else:
    logits = jnp.concatenate(
        [jnp.einsum("bskgh,bkth->bkgst", q, k, preferred_element_type=f32),
         jnp.einsum("bskgh,bkth->bkgst", q, k_new, preferred_element_type=f32)], -1) * scale
  logits = _softcap(logits, softcap)  # [B, K, G, S, T + S]
  logits = jnp.where(jnp.concatenate([old, own], -1)[:, None, None], logits, NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
  p_old, p_new = probs[..., :t], probs[..., t:]
  if s == 1:
    p_old, p_new = p_old.astype(f32), p_new.astype(f32)  # sums in fp32, as dots do
    out = (jnp.sum(p_old[:, :, :, 0, :, None] * v[:, :, None].astype(f32), axis=3)
           + p_new[:, :, :, 0] * v_new[:, :, None, 0].astype(f32))  # [B, K, G, H]
    out = out[:, None]
  else:
    out = (jnp.einsum("bkgst,bkth->bskgh", p_old, v)
           + jnp.einsum("bkgst,bkth->bskgh", p_new, v_new))
  return out.reshape(b, s, kh * g, h).astype(q.dtype)


def attend(q, k, v, mask, *, scale: float, softcap: float | None = None,
           implementation: str = "auto", block: int = 512, causal: bool = False):
  """Attention of grouped queries ``q [B, S, K, G, H]`` over ``k, v [B, K, T, H]``.

  Args:
    mask: [B, S, T] bool, True where a query may attend to a slot.
    scale: logit scale; softcap: ``tanh(x / cap) * cap`` on the logits when set.
    implementation: one of ``IMPLEMENTATIONS`` (see the module docstring).
    block: key block of the chunked kernel; the query block of ``causal`` when named.
    causal: (static) the mask is causal in cache slots (see :func:`causal_attention`):
      ``auto`` may pick ``causal`` then, and naming ``causal`` requires it.
  Returns:
    [B, S, K * G, H] in the query dtype.
  """
  impl = check_implementation(implementation)
  s, t = q.shape[1], k.shape[2]
  if impl == "causal":
    if not causal:  # it reads only a prefix of the cache: wrong for any other mask
      raise ValueError("the 'causal' attention kernel needs a causal mask (causal=True, as "
                       "the models pass); use 'einsum' or 'chunked' for this one")
    return causal_attention(q, k, v, mask, scale=scale, softcap=softcap, q_block=block)
  if impl == "auto":
    if s == 1:
      impl = "einsum"
    elif t <= block:
      # Only where it skips most of a triangle: four query blocks or more over a cache about
      # as long as the queries (prefill). With all of them (two blocks in training's pass 1,
      # a long prefix in pass 2) the training step at the original code's shape took 2-9%
      # longer in paired runs (RESULTS.md, twenty-sixth session); these shapes keep the einsum.
      if causal and s >= 4 * CAUSAL_Q_BLOCK - 1 and t - s < CAUSAL_Q_BLOCK:
        return causal_attention(q, k, v, mask, scale=scale, softcap=softcap)
      impl = "einsum"
    elif _cudnn_applies(q, softcap):
      impl = "cudnn"
    else:
      impl = "chunked"
  if impl == "cudnn":
    if softcap:
      raise ValueError("cuDNN attention has no logit soft cap; use 'chunked' or 'einsum'")
    try:
      return cudnn_attention(q, k, v, mask, scale=scale)
    except (NotImplementedError, ValueError, RuntimeError, TypeError) as e:
      logging.warning("cuDNN attention not applicable (%s); using the chunked kernel", e)
      impl = "chunked"
  if impl == "chunked":
    return chunked_attention(q, k, v, mask, scale=scale, softcap=softcap, block=block)
  return einsum_attention(q, k, v, mask, scale=scale, softcap=softcap)
