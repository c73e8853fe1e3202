"""C2C: a receiver LLM that answers on a KV cache fused from one or more sharers.

Data path (one compiled program per shape, no host syncs between the sections)::

  prompt ids [B, P] ──receiver prefill (first P-1)──▶ R cache ─┐
  sharer ids [B, P] ──sharer prefill  (first P-1)──▶ S cache ─┴─ fuse ─▶ fused R cache
      ─▶ last prompt token on the fused cache ─▶ receiver-alone decode loop ─▶ tokens

Sharer ids are aligned 1:1 with the receiver's tokens (``c2cjax.align``), so every cache
has the same slot layout and the fuser only sees caches, a layer map and a token mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax import align, fuse as fuse_lib, sampling
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
  """

  def __init__(self, receiver: LM, sharers: Sequence[LM], fusers: Sequence[Fuser], *,
               mode: str = "parallel", alignment: str = "first", max_len: int = 4096):
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
    self._generate = jax.jit(self._generate_impl, static_argnames=("cfg", "max_len", "active"))
    self._prefill = jax.jit(self._prefill_impl, static_argnames=("active", "max_len"))

  # --- pure pieces (call inside jit) ------------------------------------------------------
  def fused_cache(self, rparams, sparams, fparams, tokens, mask, sharer_tokens, fuse_mask,
                  active: tuple[int, ...], *, train=False, rng=None, step=0) -> KVCache:
    """Receiver cache of ``tokens [B, S]`` fused from the ``active`` sharers.

    Args:
      rparams: receiver params; sparams / fparams: tuples over *all* sharers.
      tokens: [B, S] receiver ids (left-padded; ``mask`` [B, S] marks real tokens).
      sharer_tokens: tuple over all sharers of [B, S] aligned sharer ids.
      fuse_mask: [B, S] slots to fuse (masked by ``mask`` too).
      active: which sharers take part (static).
    Returns:
      the fused receiver cache with S slots.
    """
    b, s = tokens.shape
    r = self.receiver
    rcache = r.module_prefill(rparams, tokens, r.init_cache(b, s), mask)
    if not active:
      return rcache
    caches = []
    for i in active:  # a handful of sharers, each its own model: not a layer loop
      sh = self.sharers[i]
      c = sh.module_prefill(sparams[i], sharer_tokens[i], sh.init_cache(b, s), mask)
      caches.append(c)
    token_mask = fuse_mask.astype(bool) & mask.astype(bool)
    return fuse_lib.fuse(
        tuple(fparams[i] for i in active), rcache, tuple(caches),
        tuple(self.fusers[i].layer_map for i in active), token_mask,
        config=tuple(self.fusers[i].config for i in active), train=train, rng=rng, step=step,
        mode=self.mode)

  def _prefill_impl(self, rparams, sparams, fparams, tokens, mask, sharer_tokens, active,
                    max_len):
    """Fused cache of all prompt tokens but the last, then the last token on it."""
    fuse_mask = jnp.ones_like(mask)
    cache = self.fused_cache(rparams, sparams, fparams, tokens[:, :-1], mask[:, :-1],
                             tuple(t[:, :-1] for t in sharer_tokens),
                             fuse_mask[:, :-1], active)
    cache = cache.pad_to(max_len)
    logits, cache = self.receiver.module_apply(rparams, tokens[:, -1:], cache)
    return logits[:, -1], cache

  def _generate_impl(self, rparams, sparams, fparams, tokens, mask, sharer_tokens, rng, cfg,
                     max_len, active):
    logits, cache = self._prefill_impl(rparams, sparams, fparams, tokens, mask, sharer_tokens,
                                       active, max_len)
    seen = (sampling.seen_tokens(tokens, mask, self.receiver.config.vocab_size)
            if cfg.repetition_penalty != 1.0 else None)
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

  def _active(self, sharers) -> tuple[int, ...]:
    if sharers is None:
      return tuple(range(len(self.sharers)))
    active = tuple(sorted(set(int(i) for i in sharers)))
    if any(i < 0 or i >= len(self.sharers) for i in active):
      raise ValueError(f"sharer indices {sharers} out of range for {len(self.sharers)} sharers")
    return active

  def prefill(self, tokens, mask, sharer_tokens, *, sharers=None, max_len=None):
    """Logits [B, V] after the prompt and the fused receiver cache (``max_len`` slots)."""
    max_len = max_len or tokens.shape[1]
    if tokens.shape[1] > max_len:
      raise ValueError(f"prompt of {tokens.shape[1]} tokens is longer than the cache ({max_len})")
    return self._prefill(*self.params, jnp.asarray(tokens), jnp.asarray(mask),
                         tuple(jnp.asarray(t) for t in sharer_tokens), self._active(sharers),
                         max_len)

  def generate(self, prompts: Sequence, *, max_new_tokens: int = 32, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
               seed: int = 0, sharers: Sequence[int] | None = None, max_len: int | None = None,
               eos_ids: Sequence[int] | None = None, return_tokens: bool = False):
    """C2C generation for a batch of chat prompts.

    Args:
      prompts: chat message lists, or strings taken as one user message.
      sharers: indices of the sharers to use for this request (default: all).
    Returns:
      decoded strings (or ``(tokens [B, N], lengths [B])`` with ``return_tokens``).
    """
    tokens, mask, sharer_tokens = self.encode(prompts)
    out, lengths, cfg = self.generate_ids(
        tokens, mask, sharer_tokens, max_new_tokens=max_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
        sharers=sharers, max_len=max_len, eos_ids=eos_ids)
    if return_tokens:
      return out, lengths
    return self.receiver.decode_texts(out, lengths, cfg)

  def generate_ids(self, tokens, mask, sharer_tokens, *, max_new_tokens: int = 32,
                   temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                   repetition_penalty: float = 1.0, seed: int = 0, sharers=None,
                   max_len: int | None = None, eos_ids=None):
    """Token-level :meth:`generate`: left-padded ``tokens``/``mask`` [B, P] and one
    aligned [B, P] id array per sharer. Returns tokens [B, N], lengths [B], the config."""
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
      raise ValueError(f"prompt of {tokens.shape[1]} tokens (padded) + {max_new_tokens} new "
                       f"tokens is longer than the cache (max_len={max_len})")
    out, lengths = self._generate(*self.params, jnp.asarray(tokens), jnp.asarray(mask),
                                  tuple(jnp.asarray(t) for t in sharer_tokens),
                                  jax.random.PRNGKey(seed), cfg, max_len, self._active(sharers))
    return np.asarray(out), np.asarray(lengths), cfg
