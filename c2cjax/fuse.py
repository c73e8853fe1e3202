"""The C2C Fuser: projects a sharer's KV cache into the receiver's and fuses it in.

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
like the PyTorch modules, e.g. ``key_mlp1/blocks_0/w1/kernel``) and applied with
``jax.vmap``; the cache is gathered and scattered on its layer axis with static indices.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from c2cjax.models.cache import KVCache

Params = dict[str, Any]
_BRANCHES = ("key", "value")
_FORMAT = "c2cjax.fuser/v1"


# --- configuration --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FuserConfig:
  """Shape and training hyper-parameters of one sharer->receiver fuser. Hashable.

  Attributes:
    sharer_kv_heads: KV heads of the sharer cache.
    sharer_head_dim: head dim of the sharer cache.
    receiver_kv_heads: KV heads of the receiver cache.
    receiver_head_dim: head dim of the receiver cache.
    hidden_dim: width of the fuser's residual stream.
    intermediate_dim: inner width of the FFN blocks (the weight path uses hidden_dim).
    num_layers: 1 block before the split, ``num_layers - 2`` on the projection path.
    dropout: dropout rate inside every FFN block (train only).
    initial_temperature: Gumbel-sigmoid temperature at step 0.
    final_temperature: temperature from ``anneal_steps`` on.
    anneal_steps: length of the geometric annealing.
    param_dtype: dtype of the parameters and of the fuser's compute.
  """

  sharer_kv_heads: int
  sharer_head_dim: int
  receiver_kv_heads: int
  receiver_head_dim: int
  hidden_dim: int = 1024
  intermediate_dim: int = 1024
  num_layers: int = 3
  dropout: float = 0.1
  initial_temperature: float = 1.0
  final_temperature: float = 0.001
  anneal_steps: int = 1929
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.num_layers < 3:
      raise ValueError(f"num_layers must be >= 3 (as in C2CProjector), got {self.num_layers}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
    if self.initial_temperature <= 0 or self.final_temperature <= 0 or self.anneal_steps <= 0:
      raise ValueError("temperatures and anneal_steps must be positive.")
    object.__setattr__(self, "param_dtype", jnp.dtype(self.param_dtype).name)

  @property
  def sharer_dim(self) -> int:
    return self.sharer_kv_heads * self.sharer_head_dim

  @property
  def receiver_dim(self) -> int:
    return self.receiver_kv_heads * self.receiver_head_dim

  @property
  def dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  @classmethod
  def for_models(cls, receiver_cfg: Any, sharer_cfg: Any, **overrides) -> "FuserConfig":
    """From two model configs with ``num_kv_heads`` and ``head_dim`` attributes."""
    return cls(sharer_kv_heads=sharer_cfg.num_kv_heads, sharer_head_dim=sharer_cfg.head_dim,
               receiver_kv_heads=receiver_cfg.num_kv_heads,
               receiver_head_dim=receiver_cfg.head_dim, **overrides)


def temperature(config: FuserConfig, step) -> jax.Array:
  """Gate temperature ``init * (final / init) ** (min(step, anneal) / anneal)``."""
  frac = jnp.minimum(jnp.asarray(step, jnp.float32), config.anneal_steps) / config.anneal_steps
  ratio = config.final_temperature / config.initial_temperature
  return config.initial_temperature * jnp.power(jnp.float32(ratio), frac)


# --- layer maps -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LayerMap:
  """Static (receiver layer, sharer layer) pairs; pair ``i`` uses fuser params ``[i]``.

  Hashable, so it can be a ``jax.jit`` static argument. Receiver layers are unique.
  """

  receiver: tuple[int, ...]
  sharer: tuple[int, ...]

  def __post_init__(self):
    receiver = tuple(int(i) for i in self.receiver)
    sharer = tuple(int(i) for i in self.sharer)
    if len(receiver) != len(sharer):
      raise ValueError(f"{len(receiver)} receiver layers but {len(sharer)} sharer layers.")
    if len(set(receiver)) != len(receiver):
      raise ValueError(f"Receiver layers must be unique, got {receiver}.")
    if any(i < 0 for i in receiver + sharer):
      raise ValueError("Layer indices must be non-negative.")
    object.__setattr__(self, "receiver", receiver)
    object.__setattr__(self, "sharer", sharer)

  def __len__(self) -> int:
    return len(self.receiver)

  @property
  def receiver_idx(self) -> np.ndarray:
    """[P] int32 receiver layer of each pair."""
    return np.asarray(self.receiver, np.int32)

  @property
  def sharer_idx(self) -> np.ndarray:
    """[P] int32 sharer layer of each pair."""
    return np.asarray(self.sharer, np.int32)

  def pairs(self) -> list[tuple[int, int]]:
    return list(zip(self.receiver, self.sharer))

  def select(self, keep: np.ndarray) -> "LayerMap":
    """The pairs where ``keep [P]`` (bool) is True."""
    keep = np.asarray(keep, bool)
    return LayerMap(tuple(np.asarray(self.receiver)[keep].tolist()),
                    tuple(np.asarray(self.sharer)[keep].tolist()))

  def to_json(self) -> dict[str, list[int]]:
    return {"receiver": list(self.receiver), "sharer": list(self.sharer)}

  @classmethod
  def from_json(cls, obj: dict[str, list[int]]) -> "LayerMap":
    return cls(tuple(obj["receiver"]), tuple(obj["sharer"]))


def last_aligned(num_receiver_layers: int, num_sharer_layers: int) -> LayerMap:
  """Last receiver layer -> last sharer layer, walking back one to one.

  Receiver layers with no sharer layer left (when the receiver is deeper) stay unfused.
  The released C2C code instead clamps them all onto sharer layer 0.
  """
  offset = num_sharer_layers - num_receiver_layers
  receiver = [t for t in range(num_receiver_layers) if 0 <= t + offset < num_sharer_layers]
  return LayerMap(tuple(receiver), tuple(t + offset for t in receiver))


def k_nearest(num_receiver_layers: int, num_sharer_layers: int) -> LayerMap:
  """Each receiver layer -> the sharer layer nearest in relative depth (C2C, K = 1).

  Layers sit at ``i / (L - 1)`` in [0, 1]; ties go to the shallower sharer layer (the
  released code's stable sort). Compared in exact integer arithmetic.
  """
  nr, ns = num_receiver_layers, num_sharer_layers
  sharer = []
  for t in range(nr):
    # |s / (ns - 1) - t / (nr - 1)| scaled by (ns - 1) * (nr - 1).
    dist = [abs(s * max(nr - 1, 1) - t * max(ns - 1, 1)) if ns > 1 else 0 for s in range(ns)]
    sharer.append(int(np.argmin(dist)))
  return LayerMap(tuple(range(nr)), tuple(sharer))


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
    return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)


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
    outs = []
    for i, (prefix, s, r) in enumerate((("key", sk, rk), ("value", sv, rv))):
      s_flat = jnp.einsum("bkth->btkh", s.astype(dt)).reshape(b, t, -1)
      r_tok = jnp.einsum("bkth->btkh", r.astype(dt))
      x = jnp.concatenate([s_flat, r_tok.reshape(b, t, -1)], axis=-1)
      h = _dense(cfg.hidden_dim, dt, f"{prefix}_in")(x)
      h = FFNStack(1, cfg.intermediate_dim, cfg.dropout, dt, name=f"{prefix}_mlp1")(
          h, not train)
      p = FFNStack(cfg.num_layers - 2, cfg.intermediate_dim, cfg.dropout, dt,
                   name=f"{prefix}_proj_mlp2")(h, not train)
      proj = _dense(kr * hr, dt, f"{prefix}_proj_out")(p).reshape(b, t, kr, hr)
      w = FFNStack(1, cfg.hidden_dim, cfg.dropout, dt, name=f"{prefix}_scalar_mlp2")(
          h, not train)
      w = _dense(kr, dt, f"{prefix}_scalar_head")(w)  # [B, T, Kr]
      logit = self.param(f"{prefix}_gate_logit", nn.initializers.zeros, (), dt)
      if not train:
        gate = hard_gate(logit)
      elif gumbel_noise is not None:
        gate = soft_gate(logit, gumbel_noise[i].astype(dt), tau)
      else:
        gate = sample_gate(self.make_rng("gumbel"), logit, (b, t, kr), tau)
      scale = (gate * jax.nn.sigmoid(w)).astype(dt)  # [B, T, Kr]
      out = r_tok + jnp.einsum("btk,btkh->btkh", scale, proj)
      outs.append(jnp.einsum("btkh->bkth", out))
    return outs[0], outs[1]


# --- params ---------------------------------------------------------------------------
def _dummy_inputs(config: FuserConfig):
  s = jnp.zeros((1, config.sharer_kv_heads, 1, config.sharer_head_dim), config.dtype)
  r = jnp.zeros((1, config.receiver_kv_heads, 1, config.receiver_head_dim), config.dtype)
  return s, s, r, r


def init(config: FuserConfig, layer_map: LayerMap, rng: jax.Array) -> Params:
  """Fresh params stacked over the pairs of ``layer_map``: leaves ``[P, ...]``.

  PyTorch's defaults, as the released code trains from: every Linear weight and bias
  ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, RMSNorm scales 1, gate logits 0. All draws come
  from one uniform sample (one PRNG call compiles in well under a second; one per leaf
  would take several).
  """
  shapes = jax.eval_shape(
      lambda: FuserLayer(config).init(jax.random.key(0), *_dummy_inputs(config))["params"])
  flat = traverse_util.flatten_dict(shapes)
  drawn = [path for path in flat if path[-1] in ("kernel", "bias")]
  sizes = [math.prod(flat[path].shape) for path in drawn]
  p = len(layer_map)
  u = jax.random.uniform(rng, (p, sum(sizes)), config.dtype, -1.0, 1.0)
  out, offset = {}, 0
  for path, size in zip(drawn, sizes):
    fan_in = flat[(*path[:-1], "kernel")].shape[0]
    x = u[:, offset:offset + size].reshape(p, *flat[path].shape)
    out[path] = (x / math.sqrt(fan_in)).astype(config.dtype)
    offset += size
  for path, s in flat.items():
    if path[-1] == "scale":
      out[path] = jnp.ones((p, *s.shape), s.dtype)
    elif path[-1].endswith("gate_logit"):
      out[path] = jnp.zeros((p, *s.shape), s.dtype)
  if set(out) != set(flat):
    raise AssertionError(f"Uninitialised fuser params: {set(flat) - set(out)}")
  return traverse_util.unflatten_dict(out)


def num_pairs(params: Params) -> int:
  return params["key_gate_logit"].shape[0]


def prune(params, layer_map):
  """Drops pairs whose key and value gates are both closed (host side, load time).

  Hard-gated (inference) fusion of a dropped pair is the identity, so pruning changes
  no output but skips its compute. Accepts one (params, layer_map) or sequences of them.

  Returns:
    (params, layer_map) of the kept pairs, same structure as given.
  """
  if not isinstance(layer_map, LayerMap):
    pruned = [prune(p, m) for p, m in zip(params, layer_map, strict=True)]
    return tuple(p for p, _ in pruned), tuple(m for _, m in pruned)
  keep = (np.asarray(params["key_gate_logit"]) > 0) | (np.asarray(params["value_gate_logit"]) > 0)
  idx = np.flatnonzero(keep)
  return jax.tree.map(lambda x: x[idx], params), layer_map.select(keep)


# --- fusion ---------------------------------------------------------------------------
def _check_shapes(params: Params, receiver: KVCache, sharer: KVCache, layer_map: LayerMap,
                  config: FuserConfig) -> None:
  if num_pairs(params) != len(layer_map):
    raise ValueError(f"params hold {num_pairs(params)} fusers but the layer map has "
                     f"{len(layer_map)} pairs.")
  _, b, kr, t, hr = receiver.k.shape
  _, bs, ks, ts, hs = sharer.k.shape
  if (kr, hr) != (config.receiver_kv_heads, config.receiver_head_dim):
    raise ValueError(f"Receiver cache has {kr} kv heads x {hr} dims; config expects "
                     f"{config.receiver_kv_heads} x {config.receiver_head_dim}.")
  if (ks, hs) != (config.sharer_kv_heads, config.sharer_head_dim):
    raise ValueError(f"Sharer cache has {ks} kv heads x {hs} dims; config expects "
                     f"{config.sharer_kv_heads} x {config.sharer_head_dim}.")
  if (bs, ts) != (b, t):
    raise ValueError(f"Sharer cache batch/max_len {(bs, ts)} != receiver's {(b, t)}.")
  if len(layer_map) and (max(layer_map.receiver) >= receiver.num_layers
                         or max(layer_map.sharer) >= sharer.num_layers):
    raise ValueError(f"Layer map {layer_map.pairs()} out of range for {receiver.num_layers} "
                     f"receiver / {sharer.num_layers} sharer layers.")


def _apply_pairs(params: Params, sharer: KVCache, rk: jax.Array, rv: jax.Array,
                 layer_map: LayerMap, config: FuserConfig, train: bool, rng, step):
  """[P, B, Kr, T, Hr] fused keys and values of every pair, in the param dtype."""
  module = FuserLayer(config)
  tau = temperature(config, step)
  sk, sv = sharer.k[layer_map.sharer_idx], sharer.v[layer_map.sharer_idx]

  def one(p, sk, sv, rk, rv, key):
    rngs = None
    if key is not None:
      rngs = {"dropout": jax.random.fold_in(key, 0), "gumbel": jax.random.fold_in(key, 1)}
    return module.apply({"params": p}, sk, sv, rk, rv, train=train, tau=tau, rngs=rngs)

  keys = None if rng is None else jax.random.split(rng, len(layer_map))
  return jax.vmap(one)(params, sk, sv, rk, rv, keys)


def fuse(params, receiver_cache: KVCache, sharer_caches, layer_map, token_mask: jax.Array,
         *, config, train: bool = False, rng: jax.Array | None = None, step=0,
         mode: str = "parallel") -> KVCache:
  """Fuses one or more sharer caches into the receiver cache.

  Jit with ``layer_map``, ``config``, ``train`` and ``mode`` static (pass sequences as
  tuples). Differentiable wrt ``params``.

  Args:
    params: stacked fuser params, or a sequence (one per sharer).
    receiver_cache: k, v [Lr, B, Kr, T, Hr].
    sharer_caches: a KVCache (k, v [Ls, B, Ks, T, Hs], token-aligned to the receiver) or
      a sequence of them.
    layer_map: LayerMap, or a sequence (one per sharer).
    token_mask: [B, T] bool; only these slots change.
    config: FuserConfig, or a sequence (one per sharer).
    train: Gumbel-sigmoid gates and dropout (needs ``rng``); else hard gates.
    rng: PRNG key for Gumbel noise and dropout.
    step: training step for the temperature schedule (may be traced).
    mode: with several sharers, "parallel" sums each sharer's delta computed against the
      clean receiver cache; "sequential" fuses each sharer into the previous result.

  Returns:
    The receiver cache with fused k, v (same dtype); ``start``/``end`` unchanged.
  """
  if isinstance(sharer_caches, KVCache):
    params, sharer_caches, layer_map, config = (params,), (sharer_caches,), (layer_map,), (config,)
  n = len(sharer_caches)
  if not len(params) == len(layer_map) == len(config) == n:
    raise ValueError(f"Need one params/layer_map/config per sharer; got {len(params)}, "
                     f"{len(layer_map)}, {len(config)} for {n} sharers.")
  if mode not in ("parallel", "sequential"):
    raise ValueError(f"mode must be 'parallel' or 'sequential', got {mode!r}.")
  if train and rng is None:
    raise ValueError("train=True needs an rng for the Gumbel noise and dropout.")
  for p, s, m, c in zip(params, sharer_caches, layer_map, config):
    _check_shapes(p, receiver_cache, s, m, c)
  rngs = [None if rng is None else jax.random.fold_in(rng, i) for i in range(n)]
  mask = token_mask.astype(bool)[None, :, None, :, None]  # [1, B, 1, T, 1]
  k, v = receiver_cache.k, receiver_cache.v
  work = [i for i in range(n) if len(layer_map[i])]

  if mode == "sequential" or len(work) <= 1:
    for i in work:
      idx = layer_map[i].receiver_idx
      rk, rv = k[idx], v[idx]
      fk, fv = _apply_pairs(params[i], sharer_caches[i], rk, rv, layer_map[i], config[i],
                            train, rngs[i], step)
      k = k.at[idx].set(jnp.where(mask, fk, rk).astype(k.dtype), unique_indices=True)
      v = v.at[idx].set(jnp.where(mask, fv, rv).astype(v.dtype), unique_indices=True)
    return receiver_cache.replace(k=k, v=v)

  # Parallel: every sharer sees the clean receiver; deltas are summed in float32.
  union = np.unique(np.concatenate([layer_map[i].receiver_idx for i in work]))
  acc_dtype = jnp.promote_types(jnp.float32, k.dtype)
  acc_k, acc_v = k[union].astype(acc_dtype), v[union].astype(acc_dtype)
  for i in work:
    idx = layer_map[i].receiver_idx
    pos = np.searchsorted(union, idx)
    rk, rv = k[idx], v[idx]
    fk, fv = _apply_pairs(params[i], sharer_caches[i], rk, rv, layer_map[i], config[i],
                          train, rngs[i], step)
    dk = jnp.where(mask, fk.astype(acc_dtype) - rk.astype(acc_dtype), 0)
    dv = jnp.where(mask, fv.astype(acc_dtype) - rv.astype(acc_dtype), 0)
    acc_k = acc_k.at[pos].add(dk, unique_indices=True)
    acc_v = acc_v.at[pos].add(dv, unique_indices=True)
  k = k.at[union].set(acc_k.astype(k.dtype), unique_indices=True)
  v = v.at[union].set(acc_v.astype(v.dtype), unique_indices=True)
  return receiver_cache.replace(k=k, v=v)


fuse_jit = jax.jit(fuse, static_argnames=("layer_map", "config", "train", "mode"))


# --- checkpoints ----------------------------------------------------------------------
def _config_json(config: FuserConfig) -> dict[str, Any]:
  return dataclasses.asdict(config)


def _checkpointer() -> ocp.Checkpointer:
  """An orbax checkpointer of this process alone: a fuser is small and written whole (by
  process 0 of a multi-process run) from host arrays, and every process reads it alone."""
  me = jax.process_index()
  mp = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  return ocp.Checkpointer(
      ocp.CompositeCheckpointHandler(composite_options=ocp.CompositeOptions(
          multiprocessing_options=mp)), multiprocessing_options=mp)


def save(path: str | os.PathLike, params, config, layer_map, meta: dict | None = None,
         *, overwrite: bool = False) -> None:
  """Writes params (orbax) and config, layer map and ``meta`` (JSON) in one atomic step.

  Call it from one process (in multi-process runs: with params gathered to the host).

  ``params``/``config``/``layer_map`` are one fuser or sequences (one per sharer).
  Layout: ``path/params`` (orbax standard) and ``path/fuser/metadata`` (JSON).
  """
  multi = not isinstance(layer_map, LayerMap)
  seq = lambda x: list(x) if multi else [x]
  if multi and not len(params) == len(config) == len(layer_map):
    raise ValueError("params, config and layer_map must have one entry per sharer.")
  info = {"format": _FORMAT, "multi": multi,
          "config": [_config_json(c) for c in seq(config)],
          "layer_map": [m.to_json() for m in seq(layer_map)],
          "meta": dict(meta or {})}
  tree = jax.tree.map(np.asarray, list(params) if multi else params)
  ckptr = _checkpointer()
  ckptr.save(os.path.abspath(path), force=overwrite,
             args=ocp.args.Composite(params=ocp.args.StandardSave(tree),
                                     fuser=ocp.args.JsonSave(info)))


def load(path: str | os.PathLike):
  """Reads a :func:`save` checkpoint.

  Returns:
    (params, config, layer_map, meta); tuples per sharer if saved as sequences.
  """
  path = os.path.abspath(path)
  ckptr = _checkpointer()
  info = ckptr.restore(path, args=ocp.args.Composite(fuser=ocp.args.JsonRestore()))["fuser"]
  if info.get("format") != _FORMAT:
    raise ValueError(f"{path} is not a {_FORMAT} checkpoint (format={info.get('format')!r}).")
  configs = [FuserConfig(**c) for c in info["config"]]
  maps = [LayerMap.from_json(m) for m in info["layer_map"]]
  abstract = [jax.eval_shape(lambda c=c, m=m: init(c, m, jax.random.key(0)))
              for c, m in zip(configs, maps)]
  target = abstract if info["multi"] else abstract[0]
  params = ckptr.restore(path, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target)))["params"]
  params = jax.tree.map(jnp.asarray, params)
  if info["multi"]:
    return tuple(params), tuple(configs), tuple(maps), info["meta"]
  return params, configs[0], maps[0], info["meta"]


# --- import of the released PyTorch format ----------------------------------------------
def _torch_layout(config: FuserConfig) -> list[tuple[str, tuple[str, ...], tuple[int, ...], bool]]:
  """(torch name, flax path, torch shape, transpose) of every C2CProjector tensor."""
  c = config
  hid, inter = c.hidden_dim, c.intermediate_dim
  out = []
  for p in _BRANCHES:
    out.append((f"{p}_gate_logit", (f"{p}_gate_logit",), (), False))
    for name, fan_out, fan_in in ((f"{p}_in", hid, c.sharer_dim + c.receiver_dim),
                                  (f"{p}_scalar_head", c.receiver_kv_heads, hid),
                                  (f"{p}_proj_out", c.receiver_dim, hid)):
      out.append((f"{name}.weight", (name, "kernel"), (fan_out, fan_in), True))
      out.append((f"{name}.bias", (name, "bias"), (fan_out,), False))
    for stack, blocks, width in ((f"{p}_mlp1", 1, inter), (f"{p}_scalar_mlp2", 1, hid),
                                 (f"{p}_proj_mlp2", c.num_layers - 2, inter)):
      for j in range(blocks):
        tn, fp = f"{stack}.blocks.{j}", (stack, f"blocks_{j}")
        out.append((f"{tn}.norm.weight", (*fp, "norm", "scale"), (hid,), False))
        out.append((f"{tn}.w1.weight", (*fp, "w1", "kernel"), (width, hid), True))
        out.append((f"{tn}.w2.weight", (*fp, "w2", "kernel"), (hid, width), True))
  return out


def params_from_state_dict(state_dict: dict[str, np.ndarray], config: FuserConfig,
                           source: str = "state dict") -> Params:
  """One fuser's params (unstacked) from a ``C2CProjector`` state dict of NumPy arrays."""
  layout = _torch_layout(config)
  expected = {name for name, *_ in layout} | {"gate_temperature"}
  unknown = sorted(set(state_dict) - expected)
  if unknown:
    raise ValueError(f"{source}: unexpected tensors {unknown}.")
  params: Params = {}
  for name, path, shape, transpose in layout:
    if name not in state_dict:
      raise ValueError(f"{source}: missing tensor {name!r} (expected shape {shape}).")
    x = np.asarray(state_dict[name])
    if tuple(x.shape) != shape:
      raise ValueError(f"{source}: tensor {name!r} has shape {tuple(x.shape)}, expected "
                       f"{shape} for this config.")
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(x.T if transpose else x, config.dtype)
  return params


def _untype(value):
  """Decodes ``{"__type__": ..., "value": ...}`` entries of the released init_args."""
  if isinstance(value, dict) and "__type__" in value:
    return value.get("value")
  return value


def _config_from_init_args(obj: dict, source: str, param_dtype: str) -> FuserConfig:
  if obj.get("class") != "C2CProjector":
    raise ValueError(f"{source}: only C2CProjector is supported, got {obj.get('class')!r}.")
  args = {k: _untype(v) for k, v in obj.get("init_args", {}).items()}
  defaults = FuserConfig(1, 1, 1, 1)
  get = lambda k, d: args.get(k, d) if args.get(k) is not None else d
  return FuserConfig(
      sharer_kv_heads=int(get("source_num_heads", 1)), sharer_head_dim=int(args["source_dim"]),
      receiver_kv_heads=int(get("target_num_heads", 1)),
      receiver_head_dim=int(args["target_dim"]),
      hidden_dim=int(get("hidden_dim", defaults.hidden_dim)),
      intermediate_dim=int(get("intermediate_dim", defaults.intermediate_dim)),
      num_layers=int(get("num_layers", defaults.num_layers)),
      dropout=float(get("dropout", defaults.dropout)),
      initial_temperature=float(get("initial_temperature", defaults.initial_temperature)),
      final_temperature=float(get("final_temperature", defaults.final_temperature)),
      anneal_steps=int(get("anneal_steps", defaults.anneal_steps)),
      param_dtype=param_dtype)


def import_rosetta(path: str | os.PathLike, *, param_dtype: str = "float32"):
  """Imports a released C2C fuser directory (``projector_{i}.pt/.json`` + config).

  ``projector_config.json`` maps target (receiver) model ``"0"`` -> source (sharer) model
  -> receiver layer -> ``[[sharer layer, projector index], ...]``. Only the first pair of
  a receiver layer is used, as the released code does without an aggregator. Needs torch
  (only here); tensors are read with ``torch.load(weights_only=True)``.

  Returns:
    (params, config, layer_map) for one sharer, or tuples of them ordered by source model
    index when there are several.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("import_rosetta needs PyTorch to read .pt files: "
                      "pip install torch==2.13.0 (CPU wheel is enough).") from e
  path = os.fspath(path)
  with open(os.path.join(path, "projector_config.json")) as f:
    mapping = json.load(f)
  if list(mapping) != ["0"]:
    raise ValueError(f"Expected receiver model '0' only in projector_config.json, got "
                     f"{list(mapping)}.")
  cache: dict[int, tuple[FuserConfig, Params]] = {}

  def projector(idx: int) -> tuple[FuserConfig, Params]:
    if idx not in cache:
      stem = os.path.join(path, f"projector_{idx}")
      with open(stem + ".json") as f:
        cfg = _config_from_init_args(json.load(f), stem + ".json", param_dtype)
      sd = torch.load(stem + ".pt", map_location="cpu", weights_only=True)
      sd = {k: t.detach().to(torch.float32).numpy() for k, t in sd.items()}
      cache[idx] = cfg, params_from_state_dict(sd, cfg, stem + ".pt")
    return cache[idx]

  results = []
  for src in sorted(mapping["0"], key=int):
    receivers, sharers, stack, cfg = [], [], [], None
    for tgt in sorted(mapping["0"][src], key=int):
      entries = mapping["0"][src][tgt]
      if not entries:
        continue
      if len(entries) > 1:
        warnings.warn(f"Receiver layer {tgt} of source {src} has {len(entries)} sharer "
                      "layers; using the first (as the released code without aggregator).")
      sharer_layer, idx = entries[0]
      pcfg, p = projector(int(idx))
      if cfg is not None and pcfg != cfg:
        raise ValueError(f"projector_{idx} config {pcfg} differs from {cfg} of the same source.")
      cfg = pcfg
      receivers.append(int(tgt))
      sharers.append(int(sharer_layer))
      stack.append(p)
    if cfg is None:
      raise ValueError(f"Source model {src} maps no receiver layer.")
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *stack)
    results.append((params, cfg, LayerMap(tuple(receivers), tuple(sharers))))
  if len(results) == 1:
    return results[0]
  return tuple(zip(*results))
