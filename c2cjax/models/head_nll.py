"""Next-token NLL through a frozen LM head without the [B, S, V] logits.

The head's logits are the largest activation of a C2C training step (fp32 ``[B, S, V]``:
60 MiB for the local pair's 4 x 80 pass-2 tokens, 620 MiB at the paper's 4 x 256 with
Qwen3's 151,936-token vocabulary), and autodiff keeps several arrays of that size alive
(the logits, their exponentials, the softmax cotangent, the gather's scatter). Here the
sequence is cut into chunks; each chunk's logits are made, reduced to its NLL and turned
at once into the gradient with respect to the hidden states, ``(softmax - onehot) @ table``,
so only one chunk's logits ever exist and the backward pass only scales that saved
``[B, S, D]`` gradient by the loss cotangent. The work is what autodiff does (the head
matmul forward, the one back to the hidden states); no logits are recomputed.

The head is frozen: its table gets ``stop_gradient`` (C2C trains only the fuser), and
the loss weights are constants. ``token_nll(logits, ...)`` in ``c2cjax.train_step`` is
the reference (``tests/test_head_nll.py``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from c2cjax import sharding
from c2cjax.models.config import ModelConfig
from c2cjax.models.layers import vocab_logits


def head_table(cfg: ModelConfig, params) -> tuple[jax.Array, str]:
  """The LM head's table and its einsum spec: tied ``embed [V, D]`` or ``lm_head [D, V]``."""
  if cfg.tie_embeddings:
    return params["embed"], "vd"
  return params["lm_head"], "dv"


def _chunk_nll(h, y, w, table, spec: str, softcap: float | None, with_grad: bool = True):
  """NLL sum of one chunk (and its gradient w.r.t. ``h``). h [B, C, D]; y, w [B, C]."""
  z = sharding.constrain(vocab_logits(h, table, spec, softcap), sharding.LOGITS)
  lse = jax.nn.logsumexp(z, axis=-1)
  target = jnp.take_along_axis(z, y[..., None], axis=-1)[..., 0]
  total = jnp.sum((lse - target) * w)
  if not with_grad:
    return total, None
  onehot = jnp.arange(z.shape[-1], dtype=y.dtype) == y[..., None]
  dz = (jnp.exp(z - lse[..., None]) - onehot) * w[..., None]
  if softcap:  # d tanh(x / c) * c / dx = 1 - tanh^2
    dz = dz * (1.0 - jnp.square(z / softcap))
  dh = jnp.einsum(f"bcv,{spec}->bcd", dz.astype(table.dtype), table,
                  preferred_element_type=jnp.float32).astype(h.dtype)
  return total, dh


def _split(x, n: int, chunk: int):
  """[B, S, ...] -> [n, B, chunk, ...] (S padded to n * chunk)."""
  pad = n * chunk - x.shape[1]
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
  return jnp.moveaxis(x.reshape(x.shape[0], n, chunk, *x.shape[2:]), 1, 0)


def _forward(hidden, table, targets, weights, spec, softcap, chunk, with_grad: bool):
  b, s = targets.shape
  n = -(-s // max(1, min(chunk, s)))
  chunk = -(-s // n)  # the same number of chunks, padded as little as possible

  def body(total, xs):
    part, dh = _chunk_nll(*xs, table, spec, softcap, with_grad)
    return total + part, dh

  total, dh = jax.lax.scan(body, jnp.zeros((), jnp.float32),
                           (_split(hidden, n, chunk), _split(targets, n, chunk),
                            _split(weights, n, chunk)))
  if with_grad:
    dh = jnp.moveaxis(dh, 0, 1).reshape(b, n * chunk, -1)[:, :s]
  return total, dh


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _nll(hidden, table, targets, weights, spec, softcap, chunk):
  # Not differentiated (evaluation): the loss alone, no hidden-state gradient.
  return _forward(hidden, table, targets, weights, spec, softcap, chunk, with_grad=False)[0]


def _nll_fwd(hidden, table, targets, weights, spec, softcap, chunk):
  return _forward(hidden, table, targets, weights, spec, softcap, chunk, with_grad=True)


def _nll_bwd(spec, softcap, chunk, dh, g):
  del spec, softcap, chunk
  return (g * dh).astype(dh.dtype), None, None, None


_nll.defvjp(_nll_fwd, _nll_bwd)


def head_nll(cfg: ModelConfig, params, hidden: jax.Array, tokens: jax.Array,
             loss_mask: jax.Array, chunk: int = 32) -> tuple[jax.Array, jax.Array]:
  """Summed next-token NLL and the number of targets, from final hidden states.

  Args:
    cfg, params: the model's config and params (for its LM head, frozen here).
    hidden: [B, S, D] final normed hidden states (``forward(..., return_hidden=True)``);
      position t predicts ``tokens[:, t + 1]``.
    tokens: [B, S] int ids; loss_mask: [B, S], 1 where token t is a target.
    chunk: positions per chunk (peak extra memory: ``B * chunk * V`` floats, a few times).
  Returns:
    (sum of NLL over the targets, their count), as ``c2cjax.train_step.token_nll``.
  """
  table, spec = head_table(cfg, params)
  w = jax.lax.stop_gradient(loss_mask[:, 1:].astype(jnp.float32))
  total = _nll(hidden[:, :-1], jax.lax.stop_gradient(table), tokens[:, 1:].astype(jnp.int32),
               w, spec, cfg.final_softcap or None, int(chunk))
  return total, jnp.sum(w)
