"""The released C2C's prefill: its sections run in order, each fused run fused in turn.

With the "release" alignment scheme (:mod:`c2cjax.sections`) a prompt is cut into runs of
equal ``fuse_mask`` (template, message, template, ...). The released code runs them in
order: the receiver prefills a run on its cache, whose earlier fused slots already hold
fused keys/values, the sharer prefills it on its own cache, and a fused run's slots are
then fused; the last run is the receiver's alone. So a slot's receiver keys/values read
the fused runs before it, and the keys/values a run is fused from read them too.

The same result with static shapes: ``m + 1`` receiver passes over the whole prompt for
``m`` fused runs. Pass ``j`` recomputes every slot not fused yet, reading the slots fused
so far (kept, ``keep``), and fuses the ``j``-th fused run from its fresh keys/values; a
last pass gives the logits and every unfused slot's keys/values on the fused cache.
(Causality makes later slots irrelevant to earlier ones, so rerunning them changes
nothing the release computes.) The sharers prefill once: their caches never change. Only
the logits at fused slots differ from the release's (it computes them before fusing their
run); nothing reads them: the loss and generation use logits after the fused runs.
Pads inside sequences are holes of the caches (``KVCache.holes``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax.models import lm as lm_lib
from c2cjax.models.cache import KVCache


def fused_runs(fuse_mask: np.ndarray) -> tuple[np.ndarray, int]:
  """Host side: the fused runs of a ``fuse_mask`` [B, P].

  Returns:
    runs [B, P] int32: ``j`` (1-based) on the slots of each row's j-th run of fused slots,
    0 elsewhere; and the most runs of any row (a static pass count).
  """
  f = np.asarray(fuse_mask).astype(bool)
  if f.ndim != 2:
    raise ValueError(f"fuse_mask must be [B, P], got shape {f.shape}")
  starts = f & ~np.pad(f, ((0, 0), (1, 0)))[:, :-1]
  runs = np.where(f, np.cumsum(starts, axis=1), 0).astype(np.int32)
  return runs, int(runs.max(initial=0))


def run_index(fuse_mask: jax.Array) -> jax.Array:
  """:func:`fused_runs`'s ``runs`` [B, P] int32, traceable (inside jit)."""
  f = fuse_mask.astype(bool)
  starts = f & ~jnp.pad(f, ((0, 0), (1, 0)))[:, :-1]
  return jnp.where(f, jnp.cumsum(starts, axis=1), 0).astype(jnp.int32)


def release_prefill(receiver, rparams, tokens, mask, sharer_caches: tuple[KVCache, ...],
                    fuse: Callable[[KVCache, tuple[KVCache, ...], Any], KVCache],
                    runs, num_runs: int, max_len: int, *, last_only: bool = True):
  """Receiver prefill with the release's run-by-run fusion (pure; call inside jit).

  Args:
    receiver: the receiver's module (``LM.module``, a ``Decoder``).
    rparams: its params.
    tokens, mask: [B, P] receiver ids and attention mask (0 at left padding and at pads
      inside the sequence).
    sharer_caches: the active sharers' caches of the whole prompt, P slots each.
    fuse: ``fuse(receiver_cache, sharer_caches, token_mask [B, P]) -> receiver_cache``
      (the fusers of the active sharers, e.g. ``C2C._fuse`` with its params bound).
    runs: [B, P] int32 from :func:`fused_runs` or :func:`run_index`.
    num_runs: static number of fusing passes (>= every row's runs); a pass no row needs
      is skipped at run time (``lax.cond``), so a training step can take a fixed bound.
    max_len: slots of the returned cache (>= P).
    last_only: logits of the last position only (generation) or of all (training).

  Returns:
    logits [B, 1 or P, V] float32 and the fused receiver cache (``max_len`` slots, holes
    recorded, ``end = P``).
  """
  b, p = tokens.shape
  apply = lambda cache, keep, **kw: lm_lib.forward(
      receiver, rparams, tokens, cache.replace(end=jnp.zeros((), jnp.int32)), mask, keep, **kw)
  cache = lm_lib.init_cache(receiver, b, p, holes=True)
  keep = jnp.zeros((b, p), bool)

  def fuse_run(j, cache, keep):
    _, fresh = apply(cache, keep, return_hidden=True)
    run = runs == j
    return fuse(fresh, tuple(sharer_caches), run), keep | run

  for j in range(1, num_runs + 1):  # a few message runs; each pass is one whole prefill
    cache, keep = jax.lax.cond(jnp.any(runs == j), functools.partial(fuse_run, j),
                               lambda c, k: (c, k), cache, keep)
  cache = cache.pad_to(max_len)
  keep = jnp.pad(keep, ((0, 0), (0, max_len - p)))
  return apply(cache, keep, last_only=last_only)
