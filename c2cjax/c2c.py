"""C2C: a receiver LLM that answers on a KV cache fused from one or more sharers.

Data path (one compiled program per shape, no host syncs between the sections)::

  prompt ids [B, P] ──receiver prefill (first P-1)──▶ R cache ─┐
  sharer ids [B, P] ──sharer prefill  (first P-1)──▶ S cache ─┴─ fuse ─▶ fused R cache
      ─▶ last prompt token on the fused cache ─▶ receiver-alone decode loop ─▶ tokens

Sharer ids are aligned 1:1 with the receiver's tokens (``c2cjax.align``), so every cache
has the same slot layout and the fuser only sees caches, a layer map and a token mask.

Sharer-only context (``sharer_masks``, ``generate(..., sharer_context=...)``): a sharer's ids
may be wider than the receiver's, ``[B, C + P]``: it prefills its private context and the
prompt, and only its last P slots, aligned to the receiver's prompt, are fused
(:mod:`c2cjax.sharer_context`). The receiver never reads the context; its cache keeps P slots.

Options (static, off by default): ``fuse_last`` prefills all P prompt tokens, fuses the
last one too and reruns it on the fused cache keeping the fused slots; ``fuse_response``
keeps the sharers (and a receiver-alone cache) stepping on the generated tokens inside
the decode loop and fuses each new token's slot before the receiver reads it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax import align, fuse as fuse_lib, sampling, sharer_context
from c2cjax.data import chat
from c2cjax.models.cache import KVCache
from c2cjax.models.model import LM, _round_up


@dataclasses.dataclass(frozen=True, eq=False)
class Fuser:
  """One sharer's trained fuser: params, config and receiver->sharer layer map."""

  params: Any
  config: fuse_lib.FuserConfig
  layer_map: fuse_lib.LayerMap

  @classmethod
  def init(cls, receiver: LM, sharer: LM, rng, layer_map: str | fuse_lib.LayerMap = "last_aligned",
           **overrides) -> "Fuser":
    config = fuse_lib.FuserConfig.for_models(receiver.config, sharer.config, **overrides)
    if isinstance(layer_map, str):
      layer_map = layer_map_by_name(layer_map, receiver.config.num_layers,
                                    sharer.config.num_layers)
    return cls(fuse_lib.init(config, layer_map, rng), config, layer_map)

  @classmethod
  def load(cls, path) -> "Fuser":
    params, config, layer_map, _ = fuse_lib.load(path)
    return cls(params, config, layer_map)

  def pruned(self) -> "Fuser":
    """Drops layers whose gates are both closed (inference only)."""
    params, layer_map = fuse_lib.prune(self.params, self.layer_map)
    return Fuser(params, self.config, layer_map)


def layer_map_by_name(name: str, num_receiver: int, num_sharer: int) -> fuse_lib.LayerMap:
  maps = {"last_aligned": fuse_lib.last_aligned, "k_nearest": fuse_lib.k_nearest}
  if name not in maps:
    raise ValueError(f"unknown layer map {name!r}; choose from {sorted(maps)}")
  return maps[name](num_receiver, num_sharer)


class C2C:
  """Receiver + sharers + fusers.

  Args:
    receiver: the receiver :class:`LM` (its tokenizer needs a chat template for messages).
    sharers: sharer LMs.
    fusers: one :class:`Fuser` per sharer.
    mode: with several sharers, "parallel" or "sequential" fusion (see ``c2cjax.fuse``).
    alignment: "first" or "longest" token alignment for sharers with another tokenizer.
    vocab_maps: optional, one per sharer: None or a [V_receiver] int map from receiver ids
      to that sharer's ids, used for the generated tokens with ``fuse_response``. None
      (the default) takes :meth:`c2cjax.align.TokenAligner.vocab_map` of the two
      tokenizers (identity for the same tokenizer); models without tokenizers need it.

  Generation options (``generate``, ``generate_ids``, ``prefill``):
    fuse_last: also fuse the last prompt token. Receiver and sharers prefill all P prompt
      tokens; the last token is then rerun on the fused cache keeping the fused slots,
      so it reads its own fused keys/values (``train.c2c_nll``'s two-pass scheme).
    fuse_response: the sharers also run on every generated token and its slot is fused
      before the receiver reads it: per token, the receiver-alone cache and each sharer
      cache write the slot, that one slot is fused into the receiver's fused cache, and
      the receiver reruns the token on it keeping the slot. Every fused slot thus fuses
      the receiver-alone keys/values, as on the prompt and in training with a
      ``fuse_mask`` over the response. Costs per token a second receiver pass (no LM
      head), one pass per sharer and one fuser slot, and the memory of one more receiver
      cache and the sharer caches (``max_len`` slots each).
  """

  def __init__(self, receiver: LM, sharers: Sequence[LM], fusers: Sequence[Fuser], *,
               mode: str = "parallel", alignment: str = "first", max_len: int = 4096,
               vocab_maps: Sequence[Any] | None = None):
    if len(sharers) != len(fusers):
      raise ValueError(f"{len(sharers)} sharers but {len(fusers)} fusers")
    if not sharers:
      raise ValueError("C2C needs at least one sharer")
    self.receiver, self.sharers, self.fusers, self.mode = receiver, tuple(sharers), tuple(fusers), mode
    for i, (s, f) in enumerate(zip(self.sharers, self.fusers)):
      want = fuse_lib.FuserConfig.for_models(receiver.config, s.config)
      if (f.config.sharer_kv_heads, f.config.sharer_head_dim, f.config.receiver_kv_heads,
          f.config.receiver_head_dim) != (want.sharer_kv_heads, want.sharer_head_dim,
                                          want.receiver_kv_heads, want.receiver_head_dim):
        raise ValueError(f"fuser {i} was built for other cache shapes ({f.config}) than "
                         f"receiver {receiver} / sharer {s}")
    self.aligners = tuple(
        align.TokenAligner(receiver.tokenizer, s.tokenizer, alignment)
        if receiver.tokenizer is not None and s.tokenizer is not None else None
        for s in self.sharers)
    self.max_len = max_len
    self._given_maps = self._check_vocab_maps(vocab_maps)
    self._maps: dict[int, Any] = {}
    self._generate = jax.jit(self._generate_impl, static_argnames=(
        "cfg", "max_len", "active", "fuse_last", "fuse_response"))
    self._prefill = jax.jit(self._prefill_impl, static_argnames=(
        "active", "max_len", "fuse_last", "fuse_response"))

  # --- pure pieces (call inside jit) ------------------------------------------------------
  def fused_cache(self, rparams, sparams, fparams, tokens, mask, sharer_tokens, fuse_mask,
                  active: tuple[int, ...], *, train=False, rng=None, step=0,
                  return_caches: bool = False, sharer_masks=None):
    """Receiver cache of ``tokens [B, S]`` fused from the ``active`` sharers.

    Args:
      rparams: receiver params; sparams / fparams: tuples over *all* sharers.
      tokens: [B, S] receiver ids (left-padded; ``mask`` [B, S] marks real tokens).
      sharer_tokens: tuple over all sharers of [B, S] aligned sharer ids, or [B, C + S]
        (context first, see :mod:`c2cjax.sharer_context`) where ``sharer_masks`` has a mask.
      sharer_masks: None, or a tuple over all sharers of None (ids aligned to ``tokens``) or a
        [B, C + S] mask of that sharer's real tokens; its last S cache slots are fused.
      fuse_mask: [B, S] slots to fuse (masked by ``mask`` too).
      active: which sharers take part (static).
      return_caches: also return the unfused receiver cache and the active sharers' caches.
    Returns:
      the fused receiver cache with S slots; with ``return_caches``, ``(fused, receiver
      cache, tuple of sharer caches)``.
    """
    b, s = tokens.shape
    r = self.receiver
    rcache = r.module_prefill(rparams, tokens, r.init_cache(b, s), mask)
    if not active:
      return (rcache, rcache, ()) if return_caches else rcache
    caches = []
    for i in active:  # a handful of sharers, each its own model: not a layer loop
      sh = self.sharers[i]
      smask = None if sharer_masks is None else sharer_masks[i]
      if smask is None:
        c = sh.module_prefill(sparams[i], sharer_tokens[i], sh.init_cache(b, s), mask)
      else:
        c = sharer_context.prefill_slice(sh, sparams[i], sharer_tokens[i], smask, s)
      caches.append(c)
    token_mask = fuse_mask.astype(bool) & mask.astype(bool)
    fused = self._fuse(fparams, rcache, tuple(caches), token_mask, active, train=train,
                       rng=rng, step=step)
    return (fused, rcache, tuple(caches)) if return_caches else fused

  def _fuse(self, fparams, rcache, caches, token_mask, active, **kw) -> KVCache:
    """``fuse_lib.fuse`` with the ``active`` sharers' fusers; ``caches`` are theirs."""
    return fuse_lib.fuse(
        tuple(fparams[i] for i in active), rcache, caches,
        tuple(self.fusers[i].layer_map for i in active), token_mask,
        config=tuple(self.fusers[i].config for i in active), mode=self.mode, **kw)

  def _prefill_impl(self, rparams, sparams, fparams, tokens, mask, sharer_tokens, active,
                    max_len, fuse_last=False, fuse_response=False, sharer_masks=None):
    """Fused cache of all prompt tokens but the last, then the last token on it (with an
    option set: :meth:`_prefill_all`)."""
    if fuse_last or fuse_response:
      return self._prefill_all(rparams, sparams, fparams, tokens, mask, sharer_tokens,
                               active, max_len, fuse_last, fuse_response, sharer_masks)
    fuse_mask = jnp.ones_like(mask)
    cut = None if sharer_masks is None else tuple(
        None if m is None else m[:, :-1] for m in sharer_masks)
    cache = self.fused_cache(rparams, sparams, fparams, tokens[:, :-1], mask[:, :-1],
                             tuple(t[:, :-1] for t in sharer_tokens),
                             fuse_mask[:, :-1], active, sharer_masks=cut)
    cache = cache.pad_to(max_len)
    logits, cache = self.receiver.module_apply(rparams, tokens[:, -1:], cache)
    return logits[:, -1], cache

  def _prefill_all(self, rparams, sparams, fparams, tokens, mask, sharer_tokens, active,
                   max_len, fuse_last, fuse_response, sharer_masks=None):
    """Prefill on all P prompt tokens, fuse them (the last one only with ``fuse_last``),
    then rerun the last token on the fused cache, keeping the fused slots (``keep``): at
    every layer its query reads fused keys/values, its own slot included when fused.
    ``train.c2c_nll``'s two-pass scheme.

    Returns:
      logits [B, V] and the fused receiver cache (``max_len`` slots); with
      ``fuse_response`` the decode state ``(fused cache, unfused receiver cache, active
      sharers' caches)``, all with ``max_len`` slots and ``end = P``.
    """
    p = tokens.shape[1]
    real = mask.astype(bool)
    fuse_mask = real if fuse_last else real & (jnp.arange(p) < p - 1)[None]
    fused, clean, caches = self.fused_cache(rparams, sparams, fparams, tokens, mask,
                                            sharer_tokens, fuse_mask, active,
                                            return_caches=True, sharer_masks=sharer_masks)
    keep = jnp.pad(fuse_mask, ((0, 0), (0, max_len - p)))  # [B, max_len]
    fused = fused.pad_to(max_len)
    logits, fused = self.receiver.module_apply(rparams, tokens[:, -1:],
                                               fused.replace(end=fused.end - 1), keep=keep)
    if not fuse_response:
      return logits[:, -1], fused
    return logits[:, -1], (fused, clean.pad_to(max_len),
                           tuple(c.pad_to(max_len) for c in caches))

  def _response_step(self, rparams, sparams, fparams, active, vocab_maps):
    """Decode step that fuses every generated token's slot (``fuse_response``).

    ``step(tok [B, 1], (fused, clean, sharer caches))``, all caches at ``end = e``:
    the unfused receiver (its own, receiver-alone cache) and each active sharer (on its
    id for ``tok``: ``vocab_maps[i][tok]``, or ``tok`` when None) write slot ``e``;
    that one slot is fused (cost per token, not per cache length) and written into the
    fused cache; then the receiver runs ``tok`` on the fused cache keeping slot ``e``,
    so its query reads its own fused keys/values, and returns logits [B, 1, V].
    """
    r = self.receiver

    def slot(cache: KVCache, e) -> KVCache:  # [L, B, K, 1, H] view of slot e
      take = lambda x: jax.lax.dynamic_slice_in_dim(x, e, 1, axis=3)
      return cache.replace(k=take(cache.k), v=take(cache.v))

    def step(tok, state):
      fused, clean, caches = state
      e = clean.end
      clean = r.module_prefill(rparams, tok, clean)
      caches = tuple(
          self.sharers[i].module_prefill(
              sparams[i], tok if vocab_maps[i] is None else jnp.take(vocab_maps[i], tok), c)
          for i, c in zip(active, caches))
      new = self._fuse(fparams, slot(clean, e), tuple(slot(c, e) for c in caches),
                       jnp.ones(tok.shape, bool), active)
      put = lambda x, y: jax.lax.dynamic_update_slice_in_dim(x, y.astype(x.dtype), e, axis=3)
      fused = fused.replace(k=put(fused.k, new.k), v=put(fused.v, new.v))
      keep = jnp.broadcast_to(jnp.arange(fused.max_len) == e, (tok.shape[0], fused.max_len))
      logits, fused = r.module_apply(rparams, tok, fused, keep=keep)
      return logits, (fused, clean, caches)

    return step

  def _generate_impl(self, rparams, sparams, fparams, tokens, mask, sharer_tokens, rng, cfg,
                     max_len, active, vocab_maps=None, fuse_last=False, fuse_response=False,
                     sharer_masks=None):
    logits, cache = self._prefill_impl(rparams, sparams, fparams, tokens, mask, sharer_tokens,
                                       active, max_len, fuse_last, fuse_response, sharer_masks)
    seen = (sampling.seen_tokens(tokens, mask, self.receiver.config.vocab_size)
            if cfg.repetition_penalty != 1.0 else None)
    if fuse_response:
      step = self._response_step(rparams, sparams, fparams, active, vocab_maps)
    else:
      step = lambda tok, cache: self.receiver.module_apply(rparams, tok, cache)
    out, lengths, _ = sampling.decode(step, cache, logits, rng, cfg, seen)
    return out, lengths

  # --- host API ----------------------------------------------------------------------------
  @property
  def params(self):
    return (self.receiver.params, tuple(s.params for s in self.sharers),
            tuple(f.params for f in self.fusers))

  def encode(self, prompts: Sequence, multiple_of: int = 8):
    """Messages (or user strings) -> left-padded receiver ids, mask and aligned sharer ids."""
    enc = chat.ChatEncoder(self.receiver.tokenizer, self.max_len,
                           tuple(a for a in self.aligners if a is not None))
    if any(a is None for a in self.aligners):
      raise ValueError("every sharer needs a tokenizer to align prompts")
    rows = []
    for p in prompts:
      messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
      rows.append(enc.prompt(messages))
    n = len(self.sharers)
    width = _round_up(max(len(r["receiver_ids"]) for r in rows), multiple_of)
    if width < 2:
      raise ValueError("C2C needs prompts of at least 2 tokens (instruction + last token)")
    tokens = np.full((len(rows), width), self.receiver.config.pad_token_id or 0, np.int32)
    mask = np.zeros_like(tokens)
    sharer = [np.full_like(tokens, a.sharer_pad_id) for a in self.aligners]
    for i, r in enumerate(rows):
      m = len(r["receiver_ids"])
      tokens[i, width - m:] = r["receiver_ids"]
      mask[i, width - m:] = 1
      sids = r["sharer_ids"] if n > 1 else (r["sharer_ids"],)
      for j in range(n):
        sharer[j][i, width - m:] = sids[j]
    return tokens, mask, tuple(sharer)

  def encode_context(self, prompts: Sequence, contexts: Sequence[str], multiple_of: int = 8):
    """:meth:`encode` with a private context per prompt that only the sharers read.

    Returns:
      tokens, mask [B, P]; per sharer, ids and masks [B, C + P]: each row is ``context
      (in the sharer's tokens, with its special tokens) + aligned prompt ids``,
      left-padded, so its last P slots line up with the receiver's.
    """
    if len(contexts) != len(prompts):
      raise ValueError(f"{len(contexts)} contexts for {len(prompts)} prompts")
    tokens, mask, sharer = self.encode(prompts, multiple_of)
    ids, masks = [], []
    for a, s in zip(self.aligners, sharer):
      ctx = [a.sharer(c, add_special_tokens=True)["input_ids"] if c else [] for c in contexts]
      extra = _round_up(max(len(c) for c in ctx), multiple_of)
      out = np.full((len(prompts), extra + tokens.shape[1]), a.sharer_pad_id, np.int32)
      m = np.zeros_like(out)
      for b, c in enumerate(ctx):
        row = np.concatenate([np.asarray(c, np.int32), s[b][mask[b] == 1]])
        out[b, out.shape[1] - len(row):], m[b, out.shape[1] - len(row):] = row, 1
      ids.append(out)
      masks.append(m)
    return tokens, mask, tuple(ids), tuple(masks)

  def _check_vocab_maps(self, maps) -> tuple:
    n, vr = len(self.sharers), self.receiver.config.vocab_size
    if maps is None:
      return (None,) * n
    if len(maps) != n:
      raise ValueError(f"{len(maps)} vocab maps for {n} sharers")
    out = []
    for i, m in enumerate(maps):
      if m is not None:
        m = np.asarray(m)
        vs = self.sharers[i].config.vocab_size
        if m.shape != (vr,) or not np.issubdtype(m.dtype, np.integer):
          raise ValueError(f"vocab map {i} must be [{vr}] ints (receiver vocab), got "
                           f"{m.dtype}{list(m.shape)}")
        if m.size and (m.min() < 0 or m.max() >= vs):
          raise ValueError(f"vocab map {i} has ids outside sharer {i}'s vocabulary [0, {vs})")
        m = jnp.asarray(m, jnp.int32)
      out.append(m)
    return tuple(out)

  def _vocab_map(self, i: int):
    """[V_receiver] int32 map of receiver ids to sharer ``i``'s ids, or None (identity)."""
    if self._given_maps[i] is not None:
      return self._given_maps[i]
    if i not in self._maps:
      a = self.aligners[i]
      if a is None:
        raise ValueError(
            f"fuse_response needs sharer {i}'s id for every generated receiver token: give "
            "the receiver and the sharer tokenizers, or pass vocab_maps to C2C")
      vr, vs = self.receiver.config.vocab_size, self.sharers[i].config.vocab_size
      if a.identity and vr <= vs:
        self._maps[i] = None
      else:  # ids past the sharer's vocabulary (model padding rows) take the fallback
        m = a.vocab_map(vr)
        self._maps[i] = jnp.asarray(np.where(m < vs, m, a.special_id(-1)), jnp.int32)
    return self._maps[i]

  def _options(self, active, fuse_last, fuse_response):
    """Static flags (off without sharers: nothing to fuse) and the vocab maps."""
    if not active:
      return False, False, None
    fuse_last, fuse_response = bool(fuse_last), bool(fuse_response)
    maps = (tuple(self._vocab_map(i) if i in active else None
                  for i in range(len(self.sharers))) if fuse_response else None)
    return fuse_last, fuse_response, maps

  def _active(self, sharers) -> tuple[int, ...]:
    if sharers is None:
      return tuple(range(len(self.sharers)))
    active = tuple(sorted(set(int(i) for i in sharers)))
    if any(i < 0 or i >= len(self.sharers) for i in active):
      raise ValueError(f"sharer indices {sharers} out of range for {len(self.sharers)} sharers")
    return active

  def prefill(self, tokens, mask, sharer_tokens, *, sharers=None, max_len=None,
              fuse_last: bool = False, fuse_response: bool = False, sharer_masks=None):
    """Logits [B, V] after the prompt and the fused receiver cache (``max_len`` slots).

    With ``fuse_response`` the cache is the decode state ``(fused receiver cache,
    receiver-alone cache, tuple of the active sharers' caches)`` (see :class:`C2C`).
    ``sharer_masks``: see :meth:`generate_ids`.
    """
    sharer_masks = self._check_context(tokens, sharer_tokens, sharer_masks, fuse_response)
    max_len = max_len or tokens.shape[1]
    if tokens.shape[1] > max_len:
      raise ValueError(f"prompt of {tokens.shape[1]} tokens is longer than the cache ({max_len})")
    active = self._active(sharers)
    on = bool(active)  # nothing to fuse without sharers: the default program
    return self._prefill(*self.params, jnp.asarray(tokens), jnp.asarray(mask),
                         tuple(jnp.asarray(t) for t in sharer_tokens), active, max_len,
                         bool(fuse_last) and on, bool(fuse_response) and on, sharer_masks)

  def _check_context(self, tokens, sharer_tokens, sharer_masks, fuse_response):
    """Sharer masks as a tuple of None / arrays (None: no sharer reads a context)."""
    if sharer_masks is None:
      return None
    if len(sharer_masks) != len(self.sharers):
      raise ValueError(f"need one sharer mask (or None) for all {len(self.sharers)} sharers")
    out = []
    for i, (t, m) in enumerate(zip(sharer_tokens, sharer_masks)):
      if m is not None and np.shape(m) != np.shape(t):
        raise ValueError(f"sharer {i}: mask {np.shape(m)} != ids {np.shape(t)}")
      if np.shape(t)[1] < tokens.shape[1]:
        raise ValueError(f"sharer {i}: {np.shape(t)[1]} ids for {tokens.shape[1]} receiver slots")
      out.append(None if m is None else jnp.asarray(m))
    if fuse_response and any(m is not None for m in out):
      raise ValueError("fuse_response with a sharer context is not supported")
    return tuple(out)

  def generate(self, prompts: Sequence, *, max_new_tokens: int = 32, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
               seed: int = 0, sharers: Sequence[int] | None = None, max_len: int | None = None,
               eos_ids: Sequence[int] | None = None, return_tokens: bool = False,
               fuse_last: bool = False, fuse_response: bool = False,
               sharer_context: Sequence[str] | None = None):
    """C2C generation for a batch of chat prompts.

    Args:
      prompts: chat message lists, or strings taken as one user message.
      sharer_context: optional, one text per prompt that only the sharers read before the
        prompt (e.g. a private document); only their slots aligned to the prompt are fused
        and the receiver's cache keeps the prompt's length.
      sharers: indices of the sharers to use for this request (default: all).
      fuse_last, fuse_response: also fuse the last prompt token / the generated tokens
        (see :class:`C2C`); off by default, as in the paper.
    Returns:
      decoded strings (or ``(tokens [B, N], lengths [B])`` with ``return_tokens``).
    """
    masks = None
    if sharer_context is None:
      tokens, mask, sharer_tokens = self.encode(prompts)
    else:
      tokens, mask, sharer_tokens, masks = self.encode_context(prompts, sharer_context)
    out, lengths, cfg = self.generate_ids(
        tokens, mask, sharer_tokens, max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
        sharers=sharers, max_len=max_len, eos_ids=eos_ids, fuse_last=fuse_last,
        fuse_response=fuse_response, sharer_masks=masks)
    if return_tokens:
      return out, lengths
    return self.receiver.decode_texts(out, lengths, cfg)

  def generate_ids(self, tokens, mask, sharer_tokens, *, max_new_tokens: int = 32,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   repetition_penalty: float = 1.0, seed: int = 0, sharers=None,
                   max_len: int | None = None, eos_ids=None, fuse_last: bool = False,
                   fuse_response: bool = False, sharer_masks=None):
    """Token-level :meth:`generate`: left-padded ``tokens``/``mask`` [B, P] and one
    aligned [B, P] id array per sharer. Returns tokens [B, N], lengths [B], the config.

    ``sharer_masks``: None, or per sharer None or a [B, C + P] mask of its real ids, for
    sharers that read a context first (ids [B, C + P], see :meth:`encode_context`).
    """
    if tokens.shape[1] < 2:
      raise ValueError("C2C needs prompts of at least 2 tokens (instruction + last token)")
    if len(sharer_tokens) != len(self.sharers):
      raise ValueError(f"need sharer ids for all {len(self.sharers)} sharers")
    cfg = self.receiver.sampling_config(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty,
        eos_ids=tuple(eos_ids) if eos_ids is not None else None)
    need = tokens.shape[1] + max_new_tokens - 1
    max_len = max_len or need
    if need > max_len:
      also = " (with fuse_response the sharer caches too)" if fuse_response else ""
      raise ValueError(f"prompt of {tokens.shape[1]} tokens (padded) + {max_new_tokens} new "
                       f"tokens is longer than the cache{also} (max_len={max_len})")
    active = self._active(sharers)
    fuse_last, fuse_response, maps = self._options(active, fuse_last, fuse_response)
    sharer_masks = self._check_context(tokens, sharer_tokens, sharer_masks, fuse_response)
    out, lengths = self._generate(*self.params, jnp.asarray(tokens), jnp.asarray(mask),
                                  tuple(jnp.asarray(t) for t in sharer_tokens),
                                  jax.random.PRNGKey(seed), cfg, max_len, active, maps,
                                  fuse_last, fuse_response, sharer_masks)
    return np.asarray(out), np.asarray(lengths), cfg
