"""Answerers: one model (``Solo``) or a C2C receiver on a fused cache (``Fused``).

An answerer turns left-padded prompt batches into what the answer methods need: logits
after the prompt and its cache (``prefill``), teacher-forced continuation log-probs on that
cache (``score``), greedy tokens (``generate``) and their text (``decode``). A ``System`` is
a named answerer, with a ``writer`` writing a background first for text-to-text (T2T).

Both kinds share one prefill structure (all prompt tokens but the last, then the last), so
C2C with closed gates reproduces the receiver's numbers exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax import align, sharer_context, text
from c2cjax.c2c import C2C
from c2cjax.data import chat
from c2cjax.evaluation import prompts
from c2cjax.models.cache import KVCache
from c2cjax.models import lm as lm_lib
from c2cjax.models.lm import LM

# receiver ids [P], sharer ids [P] each; the release scheme adds a dict of [P] masks
# (``attention_mask``, ``sharer_masks`` per sharer, ``fuse_mask``).
Encoded = tuple


def bucket(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n; past the last bucket, the next multiple of it."""
  for b in buckets:
    if n <= b:
      return b
  return -(-n // buckets[-1]) * buckets[-1]


def pad_left(rows: Sequence[Encoded], width: int, batch: int,
             buckets: Sequence[int] = (32,)):
  """Left-padded tokens, mask [batch, width] and sharer ids; missing rows repeat the last.

  Sharer rows longer than their receiver row (a context first) widen that sharer's array by
  a bucket of the longest extra, right-aligned; its padding is then -1 (a mask that
  :func:`sharer_ids_and_masks` turns back into pad ids).
  Release-scheme rows also give ``{"sharer_masks", "fuse_mask"}`` [batch, width] arrays,
  and their mask is 0 at the pads inside a prompt too.
  """
  rows = list(rows) + [rows[-1]] * (batch - len(rows))
  tokens, mask = text.pad_rows([r[0] for r in rows], width)
  n = len(rows[0][1])
  sharer = []
  for j in range(n):
    extra = max(len(r[1][j]) - len(r[0]) for r in rows)
    wide = width + (bucket(extra, buckets) if extra > 0 else 0)
    sharer.append(text.pad_rows([r[1][j] for r in rows], wide, -1 if extra > 0 else 0)[0])
  if len(rows[0]) == 2:
    return tokens, mask, tuple(sharer)
  pad = lambda key: text.pad_rows([r[2][key] for r in rows], width)[0]
  smasks = tuple(text.pad_rows([r[2]["sharer_masks"][j] for r in rows], width)[0]
                 for j in range(n))
  return tokens, pad("attention_mask"), tuple(sharer), {"sharer_masks": smasks,
                                                        "fuse_mask": pad("fuse_mask")}


def with_context(tokenizer, context: str, ids: np.ndarray) -> np.ndarray:
  """``context`` in ``tokenizer``'s ids (with its special tokens), then ``ids``."""
  if not context:
    return np.asarray(ids, np.int32)
  ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
  return np.concatenate([np.asarray(ctx, np.int32), np.asarray(ids, np.int32)])


def sharer_ids_and_masks(tokens, sharer_tokens, pads):
  """:func:`pad_left`'s sharer arrays (-1 marks padding) -> ids and masks (None when no
  sharer reads a context: every array as wide as ``tokens``)."""
  if all(s.shape[1] == tokens.shape[1] for s in sharer_tokens):
    return tuple(np.maximum(s, 0) for s in sharer_tokens), None
  return (tuple(np.where(s >= 0, s, p).astype(np.int32) for s, p in zip(sharer_tokens, pads)),
          tuple((s >= 0).astype(np.int32) for s in sharer_tokens))


def letter_token_ids(tokenizer, n: int) -> list[list[int]]:
  """Per option letter "A".."", the ids of "X" and " X" that are a single token."""
  out = []
  for letter in prompts.letters(n):
    ids = []
    for text in (letter, " " + letter):
      enc = tokenizer.encode(text, add_special_tokens=False)
      if len(enc) == 1 and enc[0] not in ids:
        ids.append(int(enc[0]))
    if not ids:
      raise ValueError(f"neither {letter!r} nor ' {letter}' is a single token of {tokenizer}")
    out.append(ids)
  return out


def continuation_logprobs(lm: LM, params, last_logits: jax.Array, cache: KVCache,
                          cont: jax.Array) -> jax.Array:
  """Teacher-forced log-probs of O continuations per context, on copies of its cache.

  Args:
    lm: the model that continues (the receiver for C2C).
    last_logits: [B, V] logits after the context's last token.
    cache: the context's cache, B sequences, room for C - 1 more tokens.
    cont: [B, O, C] continuation ids (right-padded).
  Returns:
    [B, O, C] float32, ``log p(cont[b, o, c] | context b, cont[b, o, :c])``.
  """
  b, o, c = cont.shape
  cache = cache.replace(k=jnp.repeat(cache.k, o, axis=1), v=jnp.repeat(cache.v, o, axis=1),
                        start=jnp.repeat(cache.start, o))
  flat = cont.reshape(b * o, c)

  def logprob(logits, ids):  # gather minus logsumexp: no second [.., V] buffer
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)

  first = logprob(jnp.repeat(last_logits, o, axis=0), flat[:, 0])[:, None]  # [BO, 1]
  if c == 1:
    return first.reshape(b, o, 1)
  logits, _ = lm_lib.forward(lm.module, params, flat[:, :-1], cache)
  rest = logprob(logits, flat[:, 1:])  # [BO, C - 1]
  return jnp.concatenate([first, rest], axis=1).reshape(b, o, c)


@functools.lru_cache(maxsize=16)
def continuation_fn(lm: LM):
  """One jitted :func:`continuation_logprobs` per model, shared by Solo and Fused."""
  return jax.jit(functools.partial(continuation_logprobs, lm))


class Solo:
  """One LM answering alone (the receiver or sharer system, both sides of T2T)."""

  def __init__(self, lm: LM):
    self.lm = lm

  @property
  def tokenizer(self):
    return self.lm.tokenizer

  def encode(self, text: str, special: bool, context: str = "") -> Encoded:
    del context  # a model alone reads only its prompt
    return align.encode(self.lm.tokenizer, text, special)[0], ()

  def prefill(self, tokens, mask, sharer_tokens, max_len: int):
    """Logits [B, V] after left-padded ``tokens`` [B, P] and the cache (max_len slots)."""
    del sharer_tokens
    return self.lm.prefill(tokens, mask, max_len)

  def score(self, last_logits, cache, cont):
    return continuation_fn(self.lm)(self.lm.params, last_logits, cache, jnp.asarray(cont))

  def generate(self, tokens, mask, sharer_tokens, *, max_new_tokens: int, eos_ids=None):
    """Greedy tokens [B, N] and lengths [B] (EOS included)."""
    del sharer_tokens
    out, lengths, _ = self.lm.generate_ids(tokens, mask, max_new_tokens=max_new_tokens,
                                           eos_ids=eos_ids)
    return out, lengths

  def decode(self, out, lengths) -> list[str]:
    return self.lm.decode_texts(out, lengths, self.lm.sampling_config())


class Fused:
  """A C2C receiver answering on its cache fused from the sharers'.

  ``fuse_last``: the prompt's last token is fused too; ``fuse_reply``: a cloze
  ``reply_prefix`` is fused as part of the prompt rather than read by the receiver alone
  (both as the fuser was trained: its checkpoint's ``fuse_last`` / ``reply_prefix``).
  """

  def __init__(self, c2c: C2C, fuse_last: bool = False, fuse_reply: bool = False):
    self.fuse_last, self.fuse_reply = bool(fuse_last), bool(fuse_reply)
    if any(a is None for a in c2c.aligners):
      raise ValueError("C2C evaluation needs tokenizers on the receiver and every sharer")
    self.c2c = c2c
    # The release scheme renders chat messages with each model's own template: the
    # evaluator hands this answerer messages (prompts.mcq_messages), not rendered text.
    self.messages = c2c.alignment == "release"

  @property
  def tokenizer(self):
    return self.c2c.receiver.tokenizer

  @functools.cached_property
  def _release_encoder(self):
    return chat.ChatEncoder(self.tokenizer, self.c2c.max_len, self.c2c.aligners,
                            alignment="release")

  def encode(self, prompt, special: bool, context: str = "") -> Encoded:
    """Receiver ids and per sharer its aligned ids, after ``context`` in its own tokens
    (offsets scheme; the release scheme adds its masks, see :func:`pad_left`)."""
    if self.messages:
      if isinstance(prompt, str):
        raise ValueError("the release alignment scheme aligns chat messages; this answer "
                         "method gives plain text (use the logits or generate method)")
      if context:
        raise ValueError("a sharer context needs the offsets alignment scheme")
      r = self._release_encoder.prompt(prompt)
      return r["receiver_ids"], r["sharer_ids"], {
          "attention_mask": r["attention_mask"], "sharer_masks": r["sharer_attention_mask"],
          "fuse_mask": r["fuse_mask"]}
    alignments = [a.align(prompt, special) for a in self.c2c.aligners]
    return alignments[0].receiver_ids, tuple(
        with_context(a.sharer, context, x.sharer_ids)
        for a, x in zip(self.c2c.aligners, alignments))

  @property
  def pads(self) -> list[int]:
    return [a.sharer_pad_id for a in self.c2c.aligners]

  def _sharer_args(self, tokens, sharer_tokens, release):
    """Sharer ids and the keyword arguments for ``C2C.prefill`` / ``generate_ids``."""
    if release:
      return sharer_tokens, release
    ids, masks = sharer_ids_and_masks(tokens, sharer_tokens, self.pads)
    return ids, {"sharer_masks": masks}

  def prefill(self, tokens, mask, sharer_tokens, release=None, *, max_len: int,
              reply: int = 0):
    """Logits [B, V] after left-padded ``tokens`` [B, P] and the fused cache.

    ``reply``: the last ``reply`` tokens of every row open the receiver's reply (the cloze
    ``reply_prefix``): C2C fuses the prompt before them, then the receiver reads them alone
    on the fused cache, as it decodes a reply and as training runs the reply (unfused);
    with ``fuse_reply`` they are fused with the prompt instead.
    """
    ids, kw = self._sharer_args(tokens, sharer_tokens, release)
    if self.fuse_last:
      kw["fuse_last"] = True
    if not reply or self.fuse_reply:
      return self.c2c.prefill(tokens, mask, ids, max_len=max_len, **kw)
    if release or not 0 < reply < tokens.shape[1]:
      raise ValueError(f"a reply prefix of {reply} tokens needs the offsets scheme and a "
                       f"longer prompt ({tokens.shape[1]} tokens)")
    if kw.get("sharer_masks") is not None:
      kw["sharer_masks"] = tuple(None if m is None else m[:, :-reply]
                                 for m in kw["sharer_masks"])
    logits, cache = self.c2c.prefill(tokens[:, :-reply], mask[:, :-reply],
                                     tuple(t[:, :-reply] for t in ids), max_len=max_len, **kw)
    r = self.c2c.receiver
    return _read_on(r.module, r.params, jnp.asarray(tokens[:, -reply:]), cache)

  def score(self, last_logits, cache, cont):
    r = self.c2c.receiver
    return continuation_fn(r)(r.params, last_logits, cache, jnp.asarray(cont))

  def generate(self, tokens, mask, sharer_tokens, release=None, *, max_new_tokens: int,
               eos_ids=None):
    ids, kw = self._sharer_args(tokens, sharer_tokens, release)
    if self.fuse_last:
      kw["fuse_last"] = True
    out, lengths, _ = self.c2c.generate_ids(tokens, mask, ids, max_new_tokens=max_new_tokens,
                                            eos_ids=eos_ids, **kw)
    return out, lengths

  def decode(self, out, lengths) -> list[str]:
    r = self.c2c.receiver
    return r.decode_texts(out, lengths, r.sampling_config())


def read_on(module, params, tokens, cache: KVCache):
  """``tokens [B, N]`` read by a model on ``cache`` (after its ``end``): logits [B, V] after
  the last one and the grown cache."""
  logits, cache = lm_lib.forward(module, params, tokens, cache)
  return logits[:, -1], cache


_read_on = jax.jit(read_on, static_argnums=(0,))


def enriched_prefill(module, params, tokens, mask, ids, smask, max_len: int):
  """The cache-enrichment oracle's prefill: the model reads ``ids [B, C + P]`` (context +
  prompt, ``smask`` their real tokens), keeps the prompt's slots but the last, then runs the
  last token on them with the prompt's own positions (the structure of
  :func:`c2cjax.models.lm.prefill`). Logits [B, V] and the cache (``max_len`` slots)."""
  p = tokens.shape[1]
  cache = sharer_context.prefill_slice(module, params, ids[:, :-1], smask[:, :-1], p - 1)
  first = jnp.argmax(mask.astype(bool), axis=-1).astype(jnp.int32)
  logits, cache = lm_lib.forward(module, params, tokens[:, -1:],
                                 cache.replace(start=first).pad_to(max_len))
  return logits[:, -1], cache


_enriched_prefill = jax.jit(enriched_prefill, static_argnums=(0,), static_argnames=("max_len",))


class Enriched(Solo):
  """The training-free cache-enrichment oracle (:func:`enriched_prefill`): a cache as long
  as :class:`Solo`'s whose prompt slots attended to a context first."""

  def encode(self, text: str, special: bool, context: str = "") -> Encoded:
    ids = align.encode(self.lm.tokenizer, text, special)[0]
    return ids, (with_context(self.lm.tokenizer, context, ids),)

  def prefill(self, tokens, mask, sharer_tokens, max_len: int):
    ids, masks = sharer_ids_and_masks(tokens, sharer_tokens, [self.lm.config.pad_token_id or 0])
    return _enriched_prefill(self.lm.module, self.lm.params, jnp.asarray(tokens),
                             jnp.asarray(mask), jnp.asarray(ids[0]),
                             jnp.asarray(mask if masks is None else masks[0]), max_len=max_len)

  def generate(self, tokens, mask, sharer_tokens, *, max_new_tokens: int, eos_ids=None):
    raise NotImplementedError("the oracle scores prefill methods (logits, cloze) only")


Answerer = Solo | Fused


@dataclasses.dataclass(frozen=True, eq=False)
class System:
  """A named way to answer: ``answerer``, with ``writer`` writing backgrounds first (T2T)."""

  name: str
  answerer: Answerer
  writer: Solo | None = None
  document: str = ""  # "prompt": read Question.context in the prompt; "sharer": as context
