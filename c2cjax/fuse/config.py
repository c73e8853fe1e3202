"""Fuser configuration (frozen, hashable) and receiver->sharer layer maps."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Params = dict[str, Any]
BRANCHES = ("key", "value")

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
    gate_init: initial gate logit. The release's 0 makes each training draw a coin flip
      (open with p = 1 - 1/e under its single Gumbel) and leaves the inference gate
      ``logit > 0`` to what little gradient the logit gets; a few units (e.g. 4) start
      every gate open in training and at inference, and training may still close them.
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
  gate_init: float = 0.0

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


def last_aligned_clamped(num_receiver_layers: int, num_sharer_layers: int) -> LayerMap:
  """The released C2C's ``last_aligned``: like :func:`last_aligned`, but every receiver
  layer with no sharer layer left (a deeper receiver) maps to sharer layer 0, so every
  receiver layer gets a fuser."""
  if num_receiver_layers < 1 or num_sharer_layers < 1:
    raise ValueError(f"need >= 1 layer each, got {num_receiver_layers} -> {num_sharer_layers}")
  offset = num_sharer_layers - num_receiver_layers
  return LayerMap(tuple(range(num_receiver_layers)),
                  tuple(max(t + offset, 0) for t in range(num_receiver_layers)))


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


# --- per-sharer arguments -------------------------------------------------------------
def check_per_sharer(caller: str, **args) -> None:
  """TypeError naming the argument when a per-sharer argument (params, a KVCache, a
  LayerMap, a FuserConfig) is one value instead of a sequence, one entry per sharer (also
  for one sharer)."""
  for name, value in args.items():
    if not isinstance(value, (tuple, list)):
      raise TypeError(f"{caller}: {name} must be a sequence with one entry per sharer, got "
                      f"{type(value).__name__} (for one sharer pass ({name},))")
