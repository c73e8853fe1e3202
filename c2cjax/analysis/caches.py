"""Caches of single prompts through the models' public API (``LM.apply``, ``init_cache``).

Prompts are left-padded to a bucket width (multiples of ``BUCKET``) so that a handful of
shapes compile; a cache holds ``width`` prompt slots plus one for the last token.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax import align
from c2cjax.models.cache import KVCache
from c2cjax.models.lm import LM

BUCKET = 32


def width_for(n: int, multiple: int = BUCKET) -> int:
  return max(multiple, -(-n // multiple) * multiple)


def prefill(lm: LM, ids: Sequence[int], width: int | None = None) -> KVCache:
  """Cache of ``ids`` left-padded to ``width`` slots (+1 free slot). Real tokens sit in
  slots ``width - len(ids) .. width - 1``."""
  ids = np.asarray(ids, np.int32)
  width = width or width_for(len(ids))
  if len(ids) > width or not len(ids):
    raise ValueError(f"{len(ids)} ids do not fit a prefill of width {width}")
  tokens = np.full((1, width), lm.config.pad_token_id or 0, np.int32)
  mask = np.zeros((1, width), np.int32)
  tokens[0, width - len(ids):], mask[0, width - len(ids):] = ids, 1
  _, cache = lm.apply(lm.params, tokens, lm.init_cache(1, width + 1), attention_mask=mask)
  return cache


def next_logits(lm: LM, cache: KVCache, token: int) -> np.ndarray:
  """[V] logits of ``token`` run on (a copy of) ``cache``."""
  logits, _ = lm.apply(lm.params, np.asarray([[token]], np.int32),
                       jax.tree.map(jnp.copy, cache))
  return np.asarray(logits[0, -1], np.float32)


def real_slots(cache: KVCache) -> np.ndarray:
  """[n] the filled slots of a one-sequence cache."""
  return np.arange(int(cache.start[0]), int(cache.end))


def token_vectors(cache: KVCache) -> tuple[np.ndarray, np.ndarray]:
  """Keys and values of the real slots: [L, n, K*H] each (heads flattened head-major)."""
  slots = real_slots(cache)
  flat = lambda x: np.einsum("lkth->ltkh", np.asarray(x[:, 0][:, :, slots])).reshape(
      x.shape[0], len(slots), -1)
  return flat(cache.k), flat(cache.v)


def with_slots(template: KVCache, source: KVCache, src_slots: np.ndarray,
               layers: Sequence[int] | None = None) -> KVCache:
  """``template`` whose real slots take ``source``'s ``src_slots`` (same count), in the
  given layers (default all)."""
  dst = real_slots(template)
  if len(dst) != len(src_slots):
    raise ValueError(f"{len(src_slots)} source slots for {len(dst)} target slots")
  layers = np.arange(template.num_layers) if layers is None else np.asarray(layers, np.int32)
  # Both sides index [layers, slots] -> [l, n, B, K, H] (advanced axes first).
  put = lambda t, s: t.at[layers[:, None], :, :, dst[None, :]].set(
      s[layers[:, None], :, :, np.asarray(src_slots)[None, :]])
  return template.replace(k=put(template.k, source.k), v=put(template.v, source.v))


def letter_scores(logits: np.ndarray, ids: list[list[int]]) -> np.ndarray:
  """[n] per-letter logit (max over its ids)."""
  return np.asarray([max(logits[i] for i in group) for group in ids], np.float32)


def aligned_ids(receiver: LM, sharer: LM, text: str) -> tuple[np.ndarray, np.ndarray]:
  """Receiver ids of ``text`` and the sharer ids aligned 1:1 to them."""
  special = not getattr(receiver.tokenizer, "chat_template", None)
  a = align.TokenAligner(receiver.tokenizer, sharer.tokenizer).align(text, special)
  return a.receiver_ids, a.sharer_ids
