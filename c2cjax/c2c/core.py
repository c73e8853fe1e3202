"""C2C's device programs: pure functions of a static :class:`Spec`, callable inside jit.

Data path (one compiled program per shape, no host syncs between the sections)::

  prompt ids [B, P] ──receiver prefill (first P-1)──▶ R cache ─┐
  sharer ids [B, P] ──sharer prefill  (first P-1)──▶ S cache ─┴─ fuse ─▶ fused R cache
      ─▶ last prompt token on the fused cache ─▶ receiver-alone decode loop ─▶ tokens

Sharer ids are aligned 1:1 with the receiver's tokens (``c2cjax.align``), so every cache
has the same slot layout and the fuser only sees caches, a layer map and a token mask.

Sharer-only context (``sharer_masks``; ``C2C.generate(..., sharer_context=...)``): a sharer's
ids may be wider than the receiver's, ``[B, C + P]``: it prefills its private context and the
prompt, and only its last P slots, aligned to the receiver's prompt, are fused
(:mod:`c2cjax.sharer_context`). The receiver never reads the context; its cache keeps P slots.

Options (static, off by default): ``fuse_last`` prefills all P prompt tokens, fuses the
last one too and reruns it on the fused cache keeping the fused slots; ``fuse_response``
keeps the sharers (and a receiver-alone cache) stepping on the generated tokens inside
the decode loop and fuses each new token's slot before the receiver reads it.

``params = (receiver params, tuple of sharer params, tuple of fuser params)``. Programs:
:func:`fused_cache`, :func:`fuse_caches`, :func:`prefill`, :func:`response_step`,
:func:`decode_step`, :func:`decode` and :func:`generate`; the release alignment scheme's
are in :mod:`c2cjax.c2c.release`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from c2cjax import fuse as fuse_lib, sampling, sharer_context
from c2cjax.models import lm as lm_lib
from c2cjax.models.cache import KVCache
from c2cjax.models.layers import Decoder


@dataclasses.dataclass(frozen=True)
class Spec:
  """What C2C's device programs need to know statically (hashable: a jit static arg).

  Attributes:
    receiver: the receiver's Flax :class:`~c2cjax.models.layers.Decoder` (``LM.module``).
    sharers: the sharers' modules.
    fusers: one :class:`~c2cjax.fuse.FuserConfig` per sharer.
    layer_maps: one :class:`~c2cjax.fuse.LayerMap` per sharer.
    mode: "parallel" or "sequential" fusion of several sharers.
    pairs_at_once: layer pairs each fuser computes together (:func:`c2cjax.fuse.fuse`).
  """

  receiver: Decoder
  sharers: tuple[Decoder, ...]
  fusers: tuple[fuse_lib.FuserConfig, ...]
  layer_maps: tuple[fuse_lib.LayerMap, ...]
  mode: str = "parallel"
  pairs_at_once: int = 1


# --- pure device programs (call inside jit) ----------------------------------------------------
def fuse_caches(spec: Spec, fparams, rcache: KVCache, caches, token_mask, active, **kw) -> KVCache:
  """:func:`c2cjax.fuse.fuse` with the ``active`` sharers' fusers.

  Args:
    fparams: tuple over *all* sharers of fuser params.
    rcache: receiver cache [L, B, K, T, H]; caches: the active sharers' caches (same T).
    token_mask: [B, T] bool, slots to fuse.
    active: tuple of sharer indices (static).
    **kw: ``train``, ``rng``, ``step`` of :func:`c2cjax.fuse.fuse`.
  """
  return fuse_lib.fuse(
      tuple(fparams[i] for i in active), rcache, tuple(caches),
      tuple(spec.layer_maps[i] for i in active), token_mask,
      config=tuple(spec.fusers[i] for i in active), mode=spec.mode,
      pairs_at_once=spec.pairs_at_once, **kw)


def fused_cache(spec: Spec, params, tokens, mask, sharer_tokens, fuse_mask,
                active: tuple[int, ...], *, train=False, rng=None, step=0,
                return_caches: bool = False, sharer_masks=None):
  """Receiver cache of ``tokens [B, S]`` fused from the ``active`` sharers.

  Args:
    params: ``(receiver params, tuple of sharer params, tuple of fuser params)``, the
      tuples over *all* sharers.
    tokens: [B, S] receiver ids (left-padded; ``mask`` [B, S] marks real tokens).
    sharer_tokens: tuple over all sharers of [B, S] aligned sharer ids, or [B, C + S]
      (context first, see :mod:`c2cjax.sharer_context`) where ``sharer_masks`` has a mask.
    fuse_mask: [B, S] slots to fuse (masked by ``mask`` too).
    active: which sharers take part (static).
    return_caches: also return the unfused receiver cache and the active sharers' caches.
    sharer_masks: None, or a tuple over all sharers of None (ids aligned to ``tokens``) or
      a [B, C + S] mask of that sharer's real ids; its last S cache slots are fused.
  Returns:
    the fused receiver cache with S slots; with ``return_caches``, ``(fused, receiver
    cache, tuple of sharer caches)``.
  """
  if not isinstance(sharer_tokens, (tuple, list)):
    raise TypeError(f"sharer_tokens must be a tuple of [B, S] arrays, one per sharer; got "
                    f"{type(sharer_tokens).__name__}")
  rparams, sparams, fparams = params
  b, s = tokens.shape
  r = spec.receiver
  rcache = lm_lib.prefill_cache(r, rparams, tokens, lm_lib.init_cache(r, b, s), mask)
  if not active:
    return (rcache, rcache, ()) if return_caches else rcache
  caches = []
  for i in active:  # a handful of sharers, each its own model: not a layer loop
    sh = spec.sharers[i]
    smask = None if sharer_masks is None else sharer_masks[i]
    if smask is None:
      caches.append(lm_lib.prefill_cache(sh, sparams[i], sharer_tokens[i],
                                         lm_lib.init_cache(sh, b, s), mask))
    else:
      caches.append(sharer_context.prefill_slice(sh, sparams[i], sharer_tokens[i], smask, s))
  token_mask = fuse_mask.astype(bool) & mask.astype(bool)
  fused = fuse_caches(spec, fparams, rcache, tuple(caches), token_mask, active, train=train,
                      rng=rng, step=step)
  return (fused, rcache, tuple(caches)) if return_caches else fused


def prefill(spec: Spec, params, tokens, mask, sharer_tokens, active: tuple[int, ...],
            max_len: int, fuse_last: bool = False, fuse_response: bool = False,
            sharer_masks=None):
  """Left-padded prompts -> logits [B, V] after the last token and the fused cache.

  Default: fused cache of all prompt tokens but the last, then the last token on it.
  With ``fuse_last`` or ``fuse_response`` (static): prefill on all P prompt tokens, fuse
  them (the last one only with ``fuse_last``), then rerun the last token on the fused
  cache keeping the fused slots (``keep``): at every layer its query reads fused
  keys/values, its own slot included when fused (``train.c2c_nll``'s two-pass scheme).

  Args:
    params: ``(receiver, sharers, fusers)`` params (see :func:`fused_cache`).
    tokens, mask: [B, P]; sharer_tokens: tuple over all sharers of [B, P] aligned ids.
    active: sharer indices (static); max_len: cache slots (static).
    sharer_masks: for sharers that read a context first (see :func:`fused_cache`).
  Returns:
    logits [B, V] and the fused receiver cache (``max_len`` slots, ``end = P``); with
    ``fuse_response`` the decode state ``(fused cache, receiver-alone cache, active
    sharers' caches)``, all with ``max_len`` slots.
  """
  rparams = params[0]
  r = spec.receiver
  if not (fuse_last or fuse_response):
    fuse_mask = jnp.ones_like(mask)
    cut = None if sharer_masks is None else tuple(
        None if m is None else m[:, :-1] for m in sharer_masks)
    cache = fused_cache(spec, params, tokens[:, :-1], mask[:, :-1],
                        tuple(t[:, :-1] for t in sharer_tokens), fuse_mask[:, :-1], active,
                        sharer_masks=cut)
    logits, cache = lm_lib.forward(r, rparams, tokens[:, -1:], cache.pad_to(max_len))
    return logits[:, -1], cache
  p = tokens.shape[1]
  real = mask.astype(bool)
  fuse_mask = real if fuse_last else real & (jnp.arange(p) < p - 1)[None]
  fused, clean, caches = fused_cache(spec, params, tokens, mask, sharer_tokens, fuse_mask,
                                     active, return_caches=True, sharer_masks=sharer_masks)
  keep = jnp.pad(fuse_mask, ((0, 0), (0, max_len - p)))  # [B, max_len]
  fused = fused.pad_to(max_len)
  logits, fused = lm_lib.forward(r, rparams, tokens[:, -1:], fused.replace(end=fused.end - 1),
                                 keep=keep)
  if not fuse_response:
    return logits[:, -1], fused
  return logits[:, -1], (fused, clean.pad_to(max_len),
                         tuple(c.pad_to(max_len) for c in caches))


def response_step(spec: Spec, params, active: tuple[int, ...], vocab_maps):
  """Decode step that fuses every generated token's slot (``fuse_response``).

  ``step(tok [B, 1], (fused, clean, sharer caches))``, all caches at ``end = e``:
  the unfused receiver (its own, receiver-alone cache) and each active sharer (on its
  id for ``tok``: ``vocab_maps[i][tok]``, or ``tok`` when None) write slot ``e``;
  that one slot is fused (cost per token, not per cache length) and written into the
  fused cache; then the receiver runs ``tok`` on the fused cache keeping slot ``e``,
  so its query reads its own fused keys/values, and returns logits [B, 1, V].
  """
  rparams, sparams, fparams = params
  r = spec.receiver

  def slot(cache: KVCache, e) -> KVCache:  # [L, B, K, 1, H] view of slot e
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, e, 1, axis=3)
    return cache.replace(k=take(cache.k), v=take(cache.v))

  def step(tok, state):
    fused, clean, caches = state
    e = clean.end
    clean = lm_lib.prefill_cache(r, rparams, tok, clean)
    caches = tuple(
        lm_lib.prefill_cache(
            spec.sharers[i], sparams[i],
            tok if vocab_maps[i] is None else jnp.take(vocab_maps[i], tok), c)
        for i, c in zip(active, caches))
    new = fuse_caches(spec, fparams, slot(clean, e), tuple(slot(c, e) for c in caches),
                      jnp.ones(tok.shape, bool), active)
    put = lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y.astype(x.dtype), e, axis=3)
    fused = fused.replace(k=put(fused.k, new.k), v=put(fused.v, new.v))
    keep = jnp.broadcast_to(jnp.arange(fused.max_len) == e, (tok.shape[0], fused.max_len))
    logits, fused = lm_lib.forward(r, rparams, tok, fused, keep=keep)
    return logits, (fused, clean, caches)

  return step


def decode_step(spec: Spec, params, active: tuple[int, ...] = (), vocab_maps=None,
                fuse_response: bool = False):
  """The decode loop's ``step(tok [B, 1], cache) -> (logits [B, 1, V], cache)``: the
  receiver alone on its (fused) cache, or :func:`response_step` with ``fuse_response``."""
  if fuse_response:
    return response_step(spec, params, active, vocab_maps)
  return lambda tok, cache: lm_lib.forward(spec.receiver, params[0], tok, cache)


def decode(spec: Spec, params, logits, cache, rng, cfg: sampling.SamplingConfig, *,
           seen=None, active: tuple[int, ...] = (), vocab_maps=None,
           fuse_response: bool = False):
  """Samples after the prompt (:func:`c2cjax.sampling.decode` with :func:`decode_step`).

  Args:
    logits: [B, V] and cache: what :func:`prefill` returned.
    cfg: sampling settings (static); seen: optional [B, V] bool (repetition penalty).
  Returns:
    tokens [B, cfg.max_new_tokens] and lengths [B].
  """
  step = decode_step(spec, params, active, vocab_maps, fuse_response)
  out, lengths, _ = sampling.decode(step, cache, logits, rng, cfg, seen)
  return out, lengths


def generate(spec: Spec, params, tokens, mask, sharer_tokens, rng, cfg: sampling.SamplingConfig,
             max_len: int, active: tuple[int, ...], vocab_maps=None, fuse_last: bool = False,
             fuse_response: bool = False, sharer_masks=None):
  """:func:`prefill` then :func:`decode`: tokens [B, N] and lengths [B]."""
  logits, cache = prefill(spec, params, tokens, mask, sharer_tokens, active, max_len,
                          fuse_last, fuse_response, sharer_masks)
  seen = (sampling.seen_tokens(tokens, mask, spec.receiver.cfg.vocab_size)
          if cfg.repetition_penalty != 1.0 else None)
  return decode(spec, params, logits, cache, rng, cfg, seen=seen, active=active,
                vocab_maps=vocab_maps, fuse_response=fuse_response)
