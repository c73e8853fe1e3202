"""The host-side :class:`C2C`: encoding and alignment, vocab maps, checks, jit and
detokenising, thin over the pure programs of :mod:`c2cjax.c2c.core` and
:mod:`c2cjax.c2c.release`."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax import align, fuse as fuse_lib, inputs, runtime, sampling, sections, text
from c2cjax.c2c.core import Spec, fused_cache, generate, prefill
from c2cjax.c2c.release import (check_release_options, check_release_widths,
                                generate_release, prefill_release)
from c2cjax.data import chat, pipeline
from c2cjax.fuse import Fuser
from c2cjax.models.lm import LM
from c2cjax.release_prefill import fused_runs


class C2C:
  """Receiver + sharers + fusers.

  Args:
    receiver: the receiver :class:`LM` (its tokenizer needs a chat template for messages).
    sharers: sharer LMs.
    fusers: one :class:`Fuser` per sharer.
    mode: with several sharers, "parallel" or "sequential" fusion (see ``c2cjax.fuse``).
    alignment: the alignment scheme, "release" (the released C2C's: each sharer reads its
      own chat template, sections aligned, message contents fused, run by run; see
      ``c2cjax.sections`` and ``c2cjax.release_prefill``) or "offsets" (the receiver's text
      re-tokenised, every prompt token but the last fused). None: the scheme the fusers
      record (``Fuser.alignment``; "offsets" for fusers without one). A token strategy
      ("first", "longest") is taken as ``strategy`` with the fusers' scheme, as before.
    strategy: "first" or "longest" token alignment for sharers with another tokenizer.
    vocab_maps: optional, one per sharer: None or a [V_receiver] int map from receiver ids
      to that sharer's ids, used for the generated tokens with ``fuse_response``. None
      (the default) takes :meth:`c2cjax.align.TokenAligner.vocab_map` of the two
      tokenizers (identity for the same tokenizer); models without tokenizers need it.
    allow_mismatch: run fusers on other models than the ones they record
    (``Fuser.models``: architecture, layers, kv heads, head dim, hidden size, vocabulary)
    with a warning instead of the ValueError naming both (research use).
    pairs_at_once: layer pairs each fuser computes together (``c2cjax.fuse.fuse``): 1
      (the default, the fastest on CPU) up to all of them; the same results up to rounding.

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
               mode: str = "parallel", alignment: str | None = None, strategy: str = "first",
               max_len: int = 4096, vocab_maps: Sequence[Any] | None = None,
               allow_mismatch: bool = False, pairs_at_once: int = 1):
    if len(sharers) != len(fusers):
      raise ValueError(f"{len(sharers)} sharers but {len(fusers)} fusers")
    if not sharers:
      raise ValueError("C2C needs at least one sharer")
    fuse_lib.refuse_mismatches(
        [p for i, (s, f) in enumerate(zip(sharers, fusers))
         for p in fuse_lib.model_mismatches(getattr(f, "models", None), receiver, [s], [i])],
        allow_mismatch)
    self.receiver, self.sharers, self.fusers, self.mode = receiver, tuple(sharers), tuple(fusers), mode
    for i, (s, f) in enumerate(zip(self.sharers, self.fusers)):
      want = fuse_lib.FuserConfig.for_models(receiver.config, s.config)
      if (f.config.sharer_kv_heads, f.config.sharer_head_dim, f.config.receiver_kv_heads,
          f.config.receiver_head_dim) != (want.sharer_kv_heads, want.sharer_head_dim,
                                          want.receiver_kv_heads, want.receiver_head_dim):
        raise ValueError(f"fuser {i} was built for other cache shapes ({f.config}) than "
                         f"receiver {receiver} / sharer {s}")
    if alignment in align.STRATEGIES:  # the old meaning of ``alignment``
      alignment, strategy = None, alignment
    if alignment is None:
      recorded = {getattr(f, "alignment", "offsets") for f in self.fusers}
      if len(recorded) > 1:
        raise ValueError(f"the fusers were trained with different alignment schemes "
                         f"{sorted(recorded)}; pass alignment= to choose one")
      alignment = recorded.pop()
    self.alignment = sections.check_scheme(alignment)
    make = sections.ReleaseAligner if alignment == "release" else align.TokenAligner
    self.aligners = tuple(
        make(receiver.tokenizer, s.tokenizer, strategy)
        if receiver.tokenizer is not None and s.tokenizer is not None else None
        for s in self.sharers)
    self.max_len = max_len
    self._given_maps = self._check_vocab_maps(vocab_maps)
    self._maps: dict[int, Any] = {}
    fuse_lib.check_pairs_at_once(pairs_at_once)  # now, not when the first call traces
    self.spec = Spec(receiver.module, tuple(s.module for s in self.sharers),
                     tuple(f.config for f in self.fusers),
                     tuple(f.layer_map for f in self.fusers), mode, pairs_at_once)
    # XLA options of the jitted programs (runtime.compiler_options, at construction)
    self.xla_options = xla = runtime.compiler_options()
    self._generate = jax.jit(generate, static_argnums=(0, 6, 7, 8, 10, 11),
                             compiler_options=xla)
    self._prefill = jax.jit(prefill, static_argnums=(0, 5, 6, 7, 8), compiler_options=xla)
    self._generate_release = jax.jit(generate_release, static_argnums=(0, 8, 9, 10, 11),
                                     compiler_options=xla)
    self._prefill_release = jax.jit(prefill_release, static_argnums=(0, 7, 8, 9),
                                    compiler_options=xla)

  def fused_cache(self, rparams, sparams, fparams, tokens, mask, sharer_tokens, fuse_mask,
                  active: tuple[int, ...], **kw):
    """:func:`fused_cache` with this system's spec (pure: call inside jit)."""
    return fused_cache(self.spec, (rparams, sparams, fparams), tokens, mask, sharer_tokens,
                       fuse_mask, active, **kw)


  # --- host API ----------------------------------------------------------------------------
  @property
  def params(self):
    return (self.receiver.params, tuple(s.params for s in self.sharers),
            tuple(f.params for f in self.fusers))

  def encode_batch(self, prompts: Sequence, multiple_of: int = 8) -> dict[str, Any]:
    """Messages (or user strings) -> a left-padded batch with this C2C's scheme.

    Returns:
      ``receiver_ids``, ``attention_mask`` [B, P] and tuples over sharers of
      ``sharer_ids`` and ``sharer_attention_mask``; the release scheme adds
      ``fuse_mask`` [B, P].
    """
    if any(a is None for a in self.aligners):
      raise ValueError("every sharer needs a tokenizer to align prompts")
    if self.alignment == "offsets":
      tokens, mask, sharer = self.encode(prompts, multiple_of)
      return {"receiver_ids": tokens, "attention_mask": mask, "sharer_ids": sharer,
              "sharer_attention_mask": tuple(mask for _ in sharer)}
    enc = chat.ChatEncoder(self.receiver.tokenizer, self.max_len, self.aligners,
                           alignment="release")
    rows = [enc.prompt(text.as_messages(p)) for p in prompts]
    width = text.round_up(max(len(r["receiver_ids"]) for r in rows), multiple_of)
    pads = {**enc.pad_ids, "receiver_ids": self.receiver.config.pad_token_id or 0}
    return pipeline.pad_examples(rows, length=width, pad_ids=pads, side="left")

  def encode(self, prompts: Sequence, multiple_of: int = 8):
    """Messages (or user strings) -> left-padded receiver ids, mask [B, P] and a tuple of
    aligned sharer ids [B, P], one per sharer (the "offsets" scheme; :meth:`encode_batch`
    for either)."""
    if self.alignment != "offsets":
      raise ValueError("encode gives the offsets scheme's arrays; use encode_batch")
    if any(a is None for a in self.aligners):
      raise ValueError("every sharer needs a tokenizer to align prompts")
    prompts = inputs.check_prompts(prompts)
    if not all(isinstance(p, str) or isinstance(p[0], dict) for p in prompts):
      raise TypeError("C2C prompts are strings or chat message lists (token ids cannot be "
                      "aligned to the sharers: use generate_ids)")
    enc = chat.ChatEncoder(self.receiver.tokenizer, self.max_len, self.aligners)
    rows = [enc.prompt(text.as_messages(p)) for p in prompts]
    width = text.round_up(max(len(r["receiver_ids"]) for r in rows), multiple_of)
    if width < 2:
      raise ValueError("C2C needs prompts of at least 2 tokens (instruction + last token)")
    tokens, mask = text.pad_rows([r["receiver_ids"] for r in rows], width,
                                 self.receiver.config.pad_token_id or 0)
    sharer = tuple(text.pad_rows([r["sharer_ids"][j] for r in rows], width,
                                 a.sharer_pad_id)[0]
                   for j, a in enumerate(self.aligners))
    return tokens, mask, sharer

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
      rows = [np.concatenate([np.asarray(
          a.sharer(c, add_special_tokens=True)["input_ids"] if c else [], np.int32),
          s[b][mask[b] == 1]]) for b, c in enumerate(contexts)]
      width = text.round_up(max(len(r) for r in rows) - tokens.shape[1], multiple_of)
      x, m = text.pad_rows(rows, width + tokens.shape[1], a.sharer_pad_id)
      ids.append(x)
      masks.append(m)
    return tokens, mask, tuple(ids), tuple(masks)

  def check_context(self, tokens, sharer_tokens, sharer_masks, fuse_response=False):
    """Sharer masks as a tuple of None / arrays, checked (None: no sharer reads a context)."""
    if sharer_masks is None:
      return None
    if len(sharer_masks) != len(self.sharers):
      raise ValueError(f"need one sharer mask (or None) for all {len(self.sharers)} sharers")
    out = []
    for i, (t, m) in enumerate(zip(sharer_tokens, sharer_masks)):
      if m is not None and np.shape(m) != np.shape(t):
        raise ValueError(f"sharer {i}: mask {np.shape(m)} != ids {np.shape(t)}")
      if np.shape(t)[1] < tokens.shape[1]:
        raise ValueError(f"sharer {i}: {np.shape(t)[1]} ids for {tokens.shape[1]} receiver "
                         "slots")
      out.append(None if m is None else jnp.asarray(m))
    if fuse_response and any(m is not None for m in out):
      raise ValueError("fuse_response with a sharer context is not supported")
    return tuple(out)

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

  def options(self, active, fuse_last, fuse_response):
    """``(fuse_last, fuse_response, vocab_maps)`` for the static arguments of
    :func:`prefill`/:func:`generate` (flags off without sharers: nothing to fuse)."""
    if not active:
      return False, False, None
    fuse_last, fuse_response = bool(fuse_last), bool(fuse_response)
    maps = (tuple(self._vocab_map(i) if i in active else None
                  for i in range(len(self.sharers))) if fuse_response else None)
    return fuse_last, fuse_response, maps

  def active_sharers(self, sharers) -> tuple[int, ...]:
    """Sorted sharer indices (all when None), checked."""
    if sharers is None:
      return tuple(range(len(self.sharers)))
    active = tuple(sorted(set(int(i) for i in sharers)))
    if any(i < 0 or i >= len(self.sharers) for i in active):
      raise ValueError(f"sharer indices {sharers} out of range for {len(self.sharers)} sharers")
    return active

  def prefill(self, tokens, mask, sharer_tokens, *, sharers=None, max_len=None,
              fuse_last: bool = False, fuse_response: bool = False, sharer_masks=None,
              fuse_mask=None):
    """Logits [B, V] after the prompt and the fused receiver cache (``max_len`` slots).

    With ``fuse_response`` the cache is the decode state ``(fused receiver cache,
    receiver-alone cache, tuple of the active sharers' caches)`` (see :class:`C2C`).
    ``sharer_masks`` (a sharer context, or the release scheme with ``fuse_mask``): see
    :meth:`generate_ids`.
    """
    sharer_masks = self.check_context(tokens, sharer_tokens, sharer_masks, fuse_response)
    max_len = max_len or tokens.shape[1]
    if tokens.shape[1] > max_len:
      raise ValueError(f"prompt of {tokens.shape[1]} tokens is longer than the cache ({max_len})")
    active = self.active_sharers(sharers)
    if fuse_mask is not None:
      check_release_options(sharer_masks, fuse_last, fuse_response)
      check_release_widths(tokens, sharer_tokens, sharer_masks)
      runs, num_runs = fused_runs(fuse_mask)
      return self._prefill_release(
          self.spec, self.params, jnp.asarray(tokens), jnp.asarray(mask),
          tuple(jnp.asarray(t) for t in sharer_tokens),
          tuple(jnp.asarray(m) for m in sharer_masks), jnp.asarray(runs), active, num_runs,
          max_len)
    on = bool(active)  # nothing to fuse without sharers: the default program
    return self._prefill(self.spec, self.params, jnp.asarray(tokens), jnp.asarray(mask),
                         tuple(jnp.asarray(t) for t in sharer_tokens), active, max_len,
                         bool(fuse_last) and on, bool(fuse_response) and on, sharer_masks)

  def generate(self, prompts: Sequence, *, return_tokens: bool = False,
               sharer_context: Sequence[str] | None = None, **kw):
    """C2C generation for a batch of chat prompts.

    Args:
      prompts: chat message lists, or strings taken as one user message.
      sharer_context: optional, one text per prompt that only the sharers read before the
        prompt (e.g. a private document); only their slots aligned to the prompt are fused
        and the receiver's cache keeps the prompt's length.
      **kw: the options of :meth:`generate_ids` (``sharers``, ``seed``, ``max_len``,
        ``eos_ids``, ``fuse_last``, ``fuse_response``) and sampling settings
        (:class:`~c2cjax.sampling.SamplingConfig` fields).
    Returns:
      decoded strings (or ``(tokens [B, N], lengths [B])`` with ``return_tokens``).
    """
    if sharer_context is None:
      batch = self.encode_batch(prompts)
      if self.alignment != "offsets":
        kw.update(sharer_masks=batch["sharer_attention_mask"], fuse_mask=batch["fuse_mask"])
      tokens, mask, sharer_tokens = (batch["receiver_ids"], batch["attention_mask"],
                                     batch["sharer_ids"])
    else:
      if self.alignment != "offsets":
        raise ValueError("a sharer context needs the offsets alignment scheme")
      tokens, mask, sharer_tokens, kw["sharer_masks"] = self.encode_context(prompts,
                                                                            sharer_context)
    out, lengths, cfg = self.generate_ids(tokens, mask, sharer_tokens, **kw)
    if return_tokens:
      return out, lengths
    return self.receiver.decode_texts(out, lengths, cfg)

  def generate_ids(self, tokens, mask, sharer_tokens, *, seed: int = 0, sharers=None,
                   max_len: int | None = None, eos_ids=None, fuse_last: bool = False,
                   fuse_response: bool = False, sharer_masks=None, fuse_mask=None,
                   **sampling_kw):
    """Token-level :meth:`generate`: left-padded ``tokens``/``mask`` [B, P] and one
    aligned [B, P] id array per sharer. Returns tokens [B, N], lengths [B], the config.

    Args:
      sharers: indices of the sharers to use for this request (default: all).
      fuse_last, fuse_response: also fuse the last prompt token / the generated tokens
        (see :class:`C2C`); off by default, as in the paper.
      sharer_masks: None, or per sharer None or a mask [B, W] of its real ids [B, W]. With
        ``W = C + P``, a sharer that reads a context first (see :meth:`encode_context`):
        its slot ``C + t`` aligns with receiver slot t. With ``fuse_mask``, the release
        scheme's (:meth:`encode_batch`): one [B, P] mask per sharer.
      fuse_mask: the release scheme's [B, P] fuse mask; the prompt is then prefilled run
        by run (``c2cjax.release_prefill``).
      **sampling_kw: :class:`~c2cjax.sampling.SamplingConfig` fields.
    """
    if tokens.shape[1] < 2:
      raise ValueError("C2C needs prompts of at least 2 tokens (instruction + last token)")
    if len(sharer_tokens) != len(self.sharers):
      raise ValueError(f"need sharer ids for all {len(self.sharers)} sharers")
    cfg = self.receiver.sampling_config(eos_ids=eos_ids, **sampling_kw)
    masks = sharer_masks if sharer_masks is not None else (mask,) * len(self.sharers)
    for lm, ids, m, who in ((self.receiver, tokens, mask, "the receiver"),
                            *((s, t, sm, f"sharer {i}") for i, (s, t, sm) in
                              enumerate(zip(self.sharers, sharer_tokens, masks)))):
      inputs.check_token_batch(ids, m, vocab_size=lm.config.vocab_size,
                               max_positions=lm.config.max_position_embeddings,
                               max_new_tokens=cfg.max_new_tokens, who=who)
    max_len = sampling.cache_length(
        tokens.shape[1], cfg, max_len,
        " (with fuse_response the sharer caches too)" if fuse_response else "")
    active = self.active_sharers(sharers)
    sharer_masks = self.check_context(tokens, sharer_tokens, sharer_masks,
                                      bool(fuse_response) and bool(active))
    if fuse_mask is not None:
      check_release_options(sharer_masks, fuse_last, fuse_response)
      check_release_widths(tokens, sharer_tokens, sharer_masks)
      runs, num_runs = fused_runs(fuse_mask)
      out, lengths = self._generate_release(
          self.spec, self.params, jnp.asarray(tokens), jnp.asarray(mask),
          tuple(jnp.asarray(t) for t in sharer_tokens),
          tuple(jnp.asarray(m) for m in sharer_masks), jnp.asarray(runs),
          jax.random.PRNGKey(seed), cfg, max_len, active, num_runs)
      return np.asarray(out), np.asarray(lengths), cfg
    fuse_last, fuse_response, maps = self.options(active, fuse_last, fuse_response)
    out, lengths = self._generate(self.spec, self.params, jnp.asarray(tokens),
                                  jnp.asarray(mask),
                                  tuple(jnp.asarray(t) for t in sharer_tokens),
                                  jax.random.PRNGKey(seed), cfg, max_len, active, maps,
                                  fuse_last, fuse_response, sharer_masks)
    return np.asarray(out), np.asarray(lengths), cfg
