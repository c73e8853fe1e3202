"""The KV cache: one preallocated pytree for every layer of a decoder.

Layout follows Hugging Face transformers so that a fuser trained on HF caches applies
unchanged: per layer, keys and values are ``[batch, kv_heads, time, head_dim]`` with keys
stored *after* RoPE (and after q/k-norm where the architecture has it) and values as
projected. Layers are stacked on a leading axis:

    k, v: [L, B, K, T, H]   (L layers, B batch, K kv heads, T max_len, H head_dim)

Batches are left-padded: sequence ``b`` occupies slots ``start[b] .. end-1`` and every
sequence in the batch writes its next token at the same slot ``end``. The RoPE position
of slot ``t`` of sequence ``b`` is ``t - start[b]``. Writes are one
``lax.dynamic_update_slice`` per call, inside ``jax.jit``.

A cache made with ``holes=True`` also records pads *inside* a sequence (the released
C2C's section padding): such a slot keeps its position (pads take positions) but no
query attends to it. Calls with an ``attention_mask`` mark its zeros after ``start`` as
holes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class KVCache:
  """Keys/values of every layer, plus what the attention masks need.

  Attributes:
    k: [L, B, K, T, H] keys after RoPE, HF layout per layer.
    v: [L, B, K, T, H] values.
    start: [B] int32, first valid slot of each sequence (= its left padding).
    end: [] int32, next slot to write (shared by the batch).
    holes: None, or [B, T] bool: slots holding a pad inside the sequence, never attended.
  """

  k: jax.Array
  v: jax.Array
  start: jax.Array
  end: jax.Array
  holes: jax.Array | None = None

  @classmethod
  def init(cls, num_layers: int, batch: int, num_kv_heads: int, max_len: int,
           head_dim: int, dtype=jnp.float32, holes: bool = False) -> "KVCache":
    shape = (num_layers, batch, num_kv_heads, max_len, head_dim)
    return cls(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        start=jnp.zeros((batch,), jnp.int32),
        end=jnp.zeros((), jnp.int32),
        holes=jnp.zeros((batch, max_len), bool) if holes else None,
    )

  # --- static shape helpers -------------------------------------------------------
  @property
  def num_layers(self) -> int:
    return self.k.shape[0]

  @property
  def batch(self) -> int:
    return self.k.shape[1]

  @property
  def max_len(self) -> int:
    return self.k.shape[3]

  # --- traced helpers -----------------------------------------------------------------
  @property
  def lengths(self) -> jax.Array:
    """[B] number of real tokens held for each sequence."""
    return self.end - self.start

  def valid_mask(self) -> jax.Array:
    """[B, T] True where a slot holds a real token."""
    t = jnp.arange(self.max_len, dtype=jnp.int32)
    valid = (t[None, :] >= self.start[:, None]) & (t[None, :] < self.end)
    return valid if self.holes is None else valid & ~self.holes

  def positions(self) -> jax.Array:
    """[B, T] RoPE position of each slot (meaningful only where valid)."""
    t = jnp.arange(self.max_len, dtype=jnp.int32)
    return t[None, :] - self.start[:, None]

  def pad_to(self, max_len: int) -> "KVCache":
    """The same cache with ``max_len`` slots (extra empty slots at the end)."""
    extra = max_len - self.max_len
    if extra < 0:
      raise ValueError(f"cannot shrink a cache of {self.max_len} slots to {max_len}")
    widths = [(0, 0)] * 3 + [(0, extra), (0, 0)]
    holes = None if self.holes is None else jnp.pad(self.holes, ((0, 0), (0, extra)))
    return self.replace(k=jnp.pad(self.k, widths), v=jnp.pad(self.v, widths), holes=holes)

  def layer(self, i: int) -> tuple[jax.Array, jax.Array]:
    """Keys and values of layer ``i`` in HF layout, ``[B, K, T, H]`` each."""
    return self.k[i], self.v[i]

  def to_hf_legacy(self) -> tuple[tuple[jax.Array, jax.Array], ...]:
    """Per-layer ``(k, v)`` cropped to the filled slots, like HF's ``past_key_values``."""
    end = int(self.end)
    return tuple((self.k[i, :, :, :end], self.v[i, :, :, :end]) for i in range(self.num_layers))
