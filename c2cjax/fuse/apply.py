"""Fuser params (init, prune) and ``fuse``: sharer caches into a receiver cache."""

from __future__ import annotations

import functools
import math

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from c2cjax.fuse.config import FuserConfig, LayerMap, Params, check_per_sharer, temperature
from c2cjax.fuse.module import DROPOUT_MASK, FuserLayer
from c2cjax.models.cache import KVCache

# --- params ---------------------------------------------------------------------------
def _dummy_inputs(config: FuserConfig):
  s = jnp.zeros((1, config.sharer_kv_heads, 1, config.sharer_head_dim), config.dtype)
  r = jnp.zeros((1, config.receiver_kv_heads, 1, config.receiver_head_dim), config.dtype)
  return s, s, r, r


def init(config: FuserConfig, layer_map: LayerMap, rng: jax.Array) -> Params:
  """Fresh params stacked over the pairs of ``layer_map``: leaves ``[P, ...]``.

  PyTorch's defaults, as the released code trains from: every Linear weight and bias
  ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``, RMSNorm scales 1, gate logits 0 (``config.gate_init``). All draws come
  from one uniform sample, in one jitted program (run eagerly, its ~100 small ops compile
  one by one: 2.5 s for a tiny fuser).
  """
  return _init(config, len(layer_map), rng)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(config: FuserConfig, p: int, rng: jax.Array) -> Params:
  shapes = jax.eval_shape(
      lambda: FuserLayer(config).init(jax.random.key(0), *_dummy_inputs(config))["params"])
  flat = traverse_util.flatten_dict(shapes)
  drawn = [path for path in flat if path[-1] in ("kernel", "bias")]
  sizes = [math.prod(flat[path].shape) for path in drawn]
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
      out[path] = jnp.full((p, *s.shape), config.gate_init, s.dtype)
  if set(out) != set(flat):
    raise AssertionError(f"Uninitialised fuser params: {set(flat) - set(out)}")
  return traverse_util.unflatten_dict(out)


def num_pairs(params: Params) -> int:
  return params["key_gate_logit"].shape[0]


def prune(params, layer_map):
  """Drops pairs whose key and value gates are both closed (host side, load time).

  Hard-gated (inference) fusion of a dropped pair is the identity, so pruning changes
  no output but skips its compute. One fuser: its stacked params and its LayerMap (map
  over several sharers' fusers).

  Returns:
    (params, layer_map) of the kept pairs.
  """
  if not isinstance(layer_map, LayerMap):
    raise TypeError(f"prune: layer_map must be one fuser's LayerMap, got "
                    f"{type(layer_map).__name__} (prune each sharer's fuser in turn)")
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


# Each pair's backward keeps its matmul outputs and dropout masks; the rest is recomputed.
_REMAT_POLICY = jax.checkpoint_policies.save_from_both_policies(
    jax.checkpoint_policies.dots_saveable,
    jax.checkpoint_policies.save_only_these_names(DROPOUT_MASK))


def _apply_pairs(params: Params, sharer: KVCache, rk: jax.Array, rv: jax.Array,
                 layer_map: LayerMap, config: FuserConfig, train: bool, rng, step,
                 pairs_at_once: int = 1):
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
  # One pair after another (a scan, as nn.scan runs the LLM's layers), not vmap: each
  # pair's activations stay in cache and every matmul is a plain 2-D one. The backward
  # keeps each pair's matmul outputs and recomputes the element-wise rest (dropout masks
  # included, from the same keys). At the original code's shape on CPU this made the
  # fuser's forward + backward ~1.4x faster than vmap with every residual kept, and the
  # step's XLA temp memory 3.7 instead of 5.3 GiB (RESULTS.md, ninth session). The
  # random draws are the same as vmap's. ``pairs_at_once`` > 1 vmaps that many pairs in each
  # iteration (``lax.map``'s ``batch_size``): fewer, batched products and fewer slices of
  # the stacked params; on a GPU the one-pair loop's slices ran as thousands of small
  # copies (RESULTS.md, twenty-fourth session). The same results up to rounding.
  one = jax.checkpoint(one, policy=_REMAT_POLICY)
  batch = pairs_at_once if pairs_at_once > 1 else None
  return jax.lax.map(lambda a: one(*a), (params, sk, sv, rk, rv, keys), batch_size=batch)


def check_pairs_at_once(n) -> None:
  """ValueError unless ``n`` (``fuse``'s ``pairs_at_once``) is an integer >= 1."""
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
    raise ValueError(f"pairs_at_once must be an integer >= 1, got {n!r}.")


def fuse(params, receiver_cache: KVCache, sharer_caches, layer_map, token_mask: jax.Array,
         *, config, train: bool = False, rng: jax.Array | None = None, step=0,
         mode: str = "parallel", pairs_at_once: int = 1) -> KVCache:
  """Fuses one or more sharer caches into the receiver cache.

  Every per-sharer argument is a sequence with one entry per sharer, also for one sharer
  (``(params,)``, ``(cache,)``, ...). Jit with ``layer_map``, ``config``, ``train`` and
  ``mode`` static (as tuples). Differentiable wrt ``params``.

  Args:
    params: sequence of stacked fuser params, one per sharer.
    receiver_cache: k, v [Lr, B, Kr, T, Hr].
    sharer_caches: sequence of KVCaches (k, v [Ls, B, Ks, T, Hs], token-aligned to the
      receiver), one per sharer.
    layer_map: sequence of LayerMaps, one per sharer.
    token_mask: [B, T] bool; only these slots change.
    config: sequence of FuserConfigs, one per sharer.
    train: Gumbel-sigmoid gates and dropout (needs ``rng``); else hard gates.
    rng: PRNG key for Gumbel noise and dropout.
    step: training step for the temperature schedule (may be traced).
    mode: with several sharers, "parallel" sums each sharer's delta computed against the
      clean receiver cache; "sequential" fuses each sharer into the previous result.
    pairs_at_once: layer pairs computed together (vmapped) in each step of the loop over
      pairs; 1 (one at a time: the fastest on CPU) up to the number of pairs. The same
      results up to rounding, the same random draws.

  Returns:
    The receiver cache with fused k, v (same dtype); ``start``/``end`` unchanged.
  """
  check_per_sharer("fuse", params=params, sharer_caches=sharer_caches, layer_map=layer_map,
                   config=config)
  n = len(sharer_caches)
  if not len(params) == len(layer_map) == len(config) == n:
    raise ValueError(f"Need one params/layer_map/config per sharer; got {len(params)}, "
                     f"{len(layer_map)}, {len(config)} for {n} sharers.")
  if mode not in ("parallel", "sequential"):
    raise ValueError(f"mode must be 'parallel' or 'sequential', got {mode!r}.")
  if train and rng is None:
    raise ValueError("train=True needs an rng for the Gumbel noise and dropout.")
  check_pairs_at_once(pairs_at_once)
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
                            train, rngs[i], step, pairs_at_once)
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
                          train, rngs[i], step, pairs_at_once)
    dk = jnp.where(mask, fk.astype(acc_dtype) - rk.astype(acc_dtype), 0)
    dv = jnp.where(mask, fv.astype(acc_dtype) - rv.astype(acc_dtype), 0)
    acc_k = acc_k.at[pos].add(dk, unique_indices=True)
    acc_v = acc_v.at[pos].add(dv, unique_indices=True)
  k = k.at[union].set(acc_k.astype(k.dtype), unique_indices=True)
  v = v.at[union].set(acc_v.astype(v.dtype), unique_indices=True)
  return receiver_cache.replace(k=k, v=v)


fuse_jit = jax.jit(fuse, static_argnames=("layer_map", "config", "train", "mode",
                                           "pairs_at_once"))
