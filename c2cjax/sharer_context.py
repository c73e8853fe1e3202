"""A sharer that reads a private context before the prompt; the receiver never sees it.

Layout (one rule for training's right-padded batches and generation's left-padded prompts):
a sharer's ids are ``[B, C + S]`` where slot ``C + t`` is aligned to receiver token ``t``
(``S`` receiver slots) and its real tokens are contiguous (left padding only before them):

  training    ``[left-padded context (C)] [aligned sequence, right-padded (S)]``
  generation  ``left-pad(context + aligned prompt)`` to ``C + S`` (the prompt ends the row,
              so its tokens sit in the last slots exactly where the receiver's do)

The sharer prefills all ``C + S`` slots; only the last ``S`` slots of its cache are fused
(slots there that hold context are receiver padding, which the fuse mask excludes), so the
receiver's cache keeps its ``S`` slots: it never grows.
"""

from __future__ import annotations

import jax.numpy as jnp

from c2cjax.models import lm as lm_lib
from c2cjax.models.cache import KVCache


def join(context_ids, context_mask, ids, mask):
  """Training layout: ``[B, C]`` left-padded context before ``[B, S]`` aligned ids.

  Returns:
    ids, mask ``[B, C + S]``.
  """
  return (jnp.concatenate([context_ids, ids], axis=1),
          jnp.concatenate([context_mask, mask], axis=1))


def prefill_slice(module, params, ids, mask, length: int) -> KVCache:
  """Cache-only prefill of ``ids [B, C + S]`` by a model's ``module`` (``LM.module``;
  ``mask`` marks real tokens), cut to its last ``length`` slots (``S``), the slots aligned
  to the receiver's.

  The returned cache's ``k``/``v`` have ``length`` slots; ``end = length`` and ``start`` is
  clipped to them (what the fuser reads is ``k``/``v`` and the receiver's token mask).
  """
  b, total = ids.shape
  if total < length:
    raise ValueError(f"sharer ids of {total} slots cannot hold {length} receiver slots")
  cache = lm_lib.prefill_cache(module, params, ids, lm_lib.init_cache(module, b, total), mask)
  cut = total - length
  return cache.replace(k=cache.k[:, :, :, cut:], v=cache.v[:, :, :, cut:],
                       start=jnp.clip(cache.start - cut, 0, length),
                       end=jnp.asarray(length, jnp.int32))
