"""The paper's fuser modules (Flax Linen) and its gates.

The C2C Fuser: projects a sharer's KV cache into the receiver's and fuses it in.

One fuser per mapped receiver layer (Fu et al., "Cache-to-Cache", arXiv 2510.03215; the
released ``C2CProjector`` of thu-nics/C2C). Per token, separately for keys and values
(own weights each), with ``S`` / ``R`` the sharer / receiver heads flattened head-major:

    h    = FFN(Linear_in(concat(S, R)))                      # [hidden]
    proj = Linear_out(FFN^(num_layers-2)(h))                # [R_heads * R_head_dim]
    w    = Linear_head(FFN_I=hidden(h))                     # [R_heads]
    out  = R + gate * sigmoid(w) * proj                     # w broadcast over head_dim

``FFN`` is one pre-norm residual block ``x + Dropout(W2(GELU(W1(RMSNorm(x)))))``. The
gate is one scalar logit per layer for keys and one for values. Training samples a
relaxed gate ``sigmoid((logit + g) / tau)`` with a single standard Gumbel ``g =
-log(-log(u))`` per batch row, receiver head and token -- as the released code does (not
the logistic difference of two Gumbels), so for ``tau -> 0`` the gate is open with
probability ``1 - exp(-exp(logit))``. ``tau`` anneals geometrically with the step. At
inference the gate is hard, ``logit > 0``.

Parameters of all mapped layers are stacked on a leading pair axis (plain dicts named
like the PyTorch modules, e.g. ``key_mlp1/blocks_0/w1/kernel``) and applied one pair
after another (``jax.lax.map``); the cache is gathered and scattered on its layer axis
with static indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from c2cjax.fuse.config import FuserConfig, Params

# --- gates ----------------------------------------------------------------------------
def soft_gate(logit: jax.Array, noise: jax.Array, tau) -> jax.Array:
  """Relaxed gate ``sigmoid((logit + noise) / tau)``."""
  return jax.nn.sigmoid((logit + noise) / tau)


def sample_gate(rng: jax.Array, logit: jax.Array, shape: Sequence[int], tau) -> jax.Array:
  """Relaxed gate of ``shape`` with fresh standard Gumbel noise ``-log(-log(u))``."""
  noise = jax.random.gumbel(rng, tuple(shape), jnp.result_type(logit))
  return soft_gate(logit, noise, tau)


def hard_gate(logit: jax.Array) -> jax.Array:
  """Inference gate: 1 where ``logit > 0``, else 0."""
  return (logit > 0).astype(jnp.result_type(logit))


def gate_openness(params: Params) -> dict[str, jax.Array]:
  """Fraction of open (``logit > 0``) key, value and all gates of stacked params."""
  k = params["key_gate_logit"] > 0
  v = params["value_gate_logit"] > 0
  if k.size == 0:
    zero = jnp.zeros((), jnp.float32)
    return {"key": zero, "value": zero, "all": zero}
  mean = lambda x: jnp.mean(x.astype(jnp.float32))
  return {"key": mean(k), "value": mean(v), "all": mean(jnp.concatenate([k, v]))}


# --- the module -----------------------------------------------------------------------
def _dense(features: int, dtype, name: str, use_bias: bool = True) -> nn.Dense:
  # Initial values come from init(), which draws all params at once.
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=dtype, name=name)


# The fuser's backward recomputes its element-wise work (``fuse.apply``'s remat policy) but
# keeps the dropout masks under this name: drawing them again (threefry, a rolled loop of
# small ops on CPU) cost 0.3-0.4 s a step at the original code's shape in alternating runs
# (RESULTS.md, twentieth session); keeping them costs 1 byte an element.
DROPOUT_MASK = "fuser_dropout_mask"


class Dropout(nn.Module):
  """``nn.Dropout`` with its mask named :data:`DROPOUT_MASK` for remat policies.

  The same draws as ``nn.Dropout`` (one Bernoulli(1 - rate) mask from ``make_rng("dropout")``
  at this module's path, kept elements scaled by ``1 / (1 - rate)``): named ``Dropout_0``
  where ``nn.Dropout`` was, a trained run's masks do not change.
  """

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if self.rate == 0.0 or deterministic:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
    mask = checkpoint_name(mask, DROPOUT_MASK)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


class FFNBlock(nn.Module):
  """``x + Dropout(W2(GELU(W1(RMSNorm(x)))))``, bias-free linears, exact GELU."""

  intermediate_dim: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    hidden = x.shape[-1]
    h = nn.RMSNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=self.dtype, name="norm")(x)
    h = _dense(self.intermediate_dim, self.dtype, "w1", use_bias=False)(h)
    h = nn.gelu(h, approximate=False)
    h = _dense(hidden, self.dtype, "w2", use_bias=False)(h)
    return x + Dropout(self.dropout, name="Dropout_0")(h, deterministic)


class FFNStack(nn.Module):
  """``num_blocks`` FFN blocks (``RegularMLP``), named ``blocks_0 ...``."""

  num_blocks: int
  intermediate_dim: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    for i in range(self.num_blocks):
      x = FFNBlock(self.intermediate_dim, self.dropout, self.dtype, name=f"blocks_{i}")(
          x, deterministic)
    return x


class FuserLayer(nn.Module):
  """The fuser of one receiver layer (keys and values). Rng streams: dropout, gumbel.

  Use :func:`init` for parameters (PyTorch's initialisation, stacked over layers).
  """

  config: FuserConfig

  @nn.compact
  def __call__(self, sk: jax.Array, sv: jax.Array, rk: jax.Array, rv: jax.Array, *,
               train: bool = False, tau=1.0,
               gumbel_noise: tuple[jax.Array, jax.Array] | None = None
               ) -> tuple[jax.Array, jax.Array]:
    """Fused receiver keys and values.

    Args:
      sk, sv: [B, Ks, T, Hs] sharer keys / values of the mapped sharer layer.
      rk, rv: [B, Kr, T, Hr] receiver keys / values.
      train: relaxed Gumbel gates and dropout; else hard gates, no dropout.
      tau: gate temperature (train only).
      gumbel_noise: optional ([B, T, Kr], [B, T, Kr]) key / value noise to use instead of
        sampling from the ``gumbel`` rng stream (train only).

    Returns:
      ([B, Kr, T, Hr], [B, Kr, T, Hr]) in the param dtype.
    """
    cfg, dt = self.config, self.config.dtype
    b, kr, t, hr = rk.shape
    n = b * t
    outs = []
    for i, (prefix, s, r) in enumerate((("key", sk, rk), ("value", sv, rv))):
      # Tokens flattened to one axis: every linear is one [N, in] x [in, out] matmul, and
      # its weight gradient one [N, in]^T x [N, out] matmul. With [B, T, in], XLA:CPU
      # transposed each cotangent in a strided copy with the element-wise backward fused
      # in (3.6 of 11.5 s thread time at the original shape; RESULTS.md, ninth session).
      s_tok = jnp.einsum("bkth->btkh", s.astype(dt)).reshape(n, -1)
      r_tok = jnp.einsum("bkth->btkh", r.astype(dt)).reshape(n, kr, hr)
      x = jnp.concatenate([s_tok, r_tok.reshape(n, -1)], axis=-1)  # [N, Ks*Hs + Kr*Hr]
      h = _dense(cfg.hidden_dim, dt, f"{prefix}_in")(x)
      h = FFNStack(1, cfg.intermediate_dim, cfg.dropout, dt, name=f"{prefix}_mlp1")(
          h, not train)
      p = FFNStack(cfg.num_layers - 2, cfg.intermediate_dim, cfg.dropout, dt,
                   name=f"{prefix}_proj_mlp2")(h, not train)
      proj = _dense(kr * hr, dt, f"{prefix}_proj_out")(p).reshape(n, kr, hr)
      w = FFNStack(1, cfg.hidden_dim, cfg.dropout, dt, name=f"{prefix}_scalar_mlp2")(
          h, not train)
      w = _dense(kr, dt, f"{prefix}_scalar_head")(w)  # [N, Kr]
      logit = self.param(f"{prefix}_gate_logit", nn.initializers.constant(cfg.gate_init),
                         (), dt)
      if not train:
        gate = hard_gate(logit)
      elif gumbel_noise is not None:
        if tuple(gumbel_noise[i].shape) != (b, t, kr):
          raise ValueError(f"gumbel_noise[{i}] ({prefix}s) has shape "
                           f"{tuple(gumbel_noise[i].shape)}; expected [B, T, Kr] = "
                           f"{(b, t, kr)}")
        gate = soft_gate(logit, gumbel_noise[i].astype(dt).reshape(n, kr), tau)
      else:  # drawn as [B, T, Kr], the noise's documented shape
        gate = sample_gate(self.make_rng("gumbel"), logit, (b, t, kr), tau).reshape(n, kr)
      scale = (gate * jax.nn.sigmoid(w)).astype(dt)  # [N, Kr]
      out = r_tok + jnp.einsum("nk,nkh->nkh", scale, proj)
      outs.append(jnp.einsum("btkh->bkth", out.reshape(b, t, kr, hr)))
    return outs[0], outs[1]
