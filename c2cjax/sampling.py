"""Token sampling and the compiled decode loop shared by single models and C2C.

Greedy, temperature, top-k, top-p and HF-style repetition penalty, in that order (the
order of transformers' logits processors). The loop is one ``lax.while_loop`` that stops
when every sequence has produced an EOS id or ``max_new_tokens`` are out; nothing syncs
with the host until it returns.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from flax import struct
import jax
import jax.numpy as jnp

from c2cjax.models.cache import KVCache


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How to pick the next token. ``temperature == 0`` means greedy."""

  max_new_tokens: int = 32
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  repetition_penalty: float = 1.0
  eos_ids: tuple[int, ...] = ()
  pad_id: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
      raise ValueError(f"bad sampling settings: {self}")
    if self.repetition_penalty <= 0:
      raise ValueError("repetition_penalty must be > 0")


def cache_length(prompt_len: int, cfg: SamplingConfig, max_len: int | None = None,
                 note: str = "") -> int:
  """Cache slots for a prompt of ``prompt_len`` (padded) and ``cfg.max_new_tokens``: the
  given ``max_len`` (a clear error when too short) or just enough (the last sampled token
  is never written)."""
  need = prompt_len + cfg.max_new_tokens - 1
  max_len = max_len or need
  if need > max_len:
    raise ValueError(
        f"prompt of {prompt_len} tokens (padded) + {cfg.max_new_tokens} new tokens is longer "
        f"than the cache{note} (max_len={max_len})")
  return max_len


def seen_tokens(tokens: jax.Array, mask: jax.Array, vocab: int) -> jax.Array:
  """[B, V] bool: which ids occur in the (masked) prompt, for the repetition penalty."""
  b = tokens.shape[0]
  seen = jnp.zeros((b, vocab), bool)
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], tokens.shape)
  return seen.at[rows, tokens].max(mask.astype(bool))


def greedy(logits: jax.Array) -> jax.Array:
  """``jnp.argmax(logits, -1)`` as int32 [B] (first index of the maximum; the first NaN if
  any), from plain reductions: XLA:CPU's argmax (one reduction over (value, index) pairs)
  took ~220 us over a 49k vocabulary per decode step, these ~30 us."""
  v = logits.shape[-1]
  nan = jnp.isnan(logits)
  top = jnp.max(logits, axis=-1, keepdims=True)
  hit = jnp.where(jnp.any(nan, axis=-1, keepdims=True), nan, logits == top)
  return jnp.min(jnp.where(hit, jnp.arange(v, dtype=jnp.int32), v), axis=-1).astype(jnp.int32)


def sample(logits: jax.Array, rng: jax.Array, cfg: SamplingConfig, seen: jax.Array | None = None):
  """Next token ids [B] from logits [B, V] (float32)."""
  logits = logits.astype(jnp.float32)
  if cfg.repetition_penalty != 1.0 and seen is not None:
    pen = jnp.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
    logits = jnp.where(seen, pen, logits)
  if cfg.temperature == 0.0:
    return greedy(logits)
  logits = logits / cfg.temperature
  neg = jnp.finfo(jnp.float32).min
  if cfg.top_k:
    kth = jax.lax.top_k(logits, cfg.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, neg, logits)
  if cfg.top_p < 1.0:
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each token
    drop_sorted = before > cfg.top_p
    drop = jnp.zeros_like(drop_sorted).at[jnp.arange(logits.shape[0])[:, None], order].set(
        drop_sorted)
    logits = jnp.where(drop, neg, logits)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@struct.dataclass
class DecodeState:
  """The decode loop's carry (all [B] arrays are per sequence)."""

  i: jax.Array  # int32 scalar: the next column of ``out`` to write
  out: jax.Array  # [B, max_new_tokens] int32 tokens so far (``pad_id`` after EOS)
  lengths: jax.Array  # [B] int32, tokens up to and including EOS
  cache: Any  # the model's cache (or any pytree ``step`` threads through)
  done: jax.Array  # [B] bool, EOS seen
  tok: jax.Array  # [B] int32, the last sampled token (the next step's input)
  seen: jax.Array  # [B, V] bool, ids in the prompt or sampled (repetition penalty)
  rng: jax.Array  # PRNG key


StepFn = Callable[[jax.Array, Any], tuple[jax.Array, Any]]  # cache: KVCache or a pytree


def decode(step: StepFn, cache: KVCache, logits: jax.Array, rng: jax.Array, cfg: SamplingConfig,
           seen: jax.Array | None = None):
  """Samples up to ``cfg.max_new_tokens`` tokens; call inside ``jax.jit``.

  Args:
    step: ``(tokens [B, 1], cache) -> (logits [B, 1, V], cache)``, the model on its cache.
    cache: the cache after the prompt: a KVCache or any pytree ``step`` threads through
      (C2C's ``fuse_response`` carries its fused, receiver-alone and sharer caches).
    logits: [B, V] logits of the last prompt token.
    rng: PRNG key (unused when greedy).
    cfg: sampling settings (static).
    seen: optional [B, V] bool of ids already in the prompt (repetition penalty).
  Returns:
    tokens [B, max_new_tokens] (``pad_id`` after a sequence's EOS), lengths [B] (number of
    tokens up to and including EOS), and the final cache.
  """
  b = logits.shape[0]
  eos = jnp.asarray(cfg.eos_ids or (-1,), jnp.int32)
  if seen is None:
    seen = jnp.zeros(logits.shape, bool)

  def pick(logits, rng, seen, done):
    tok = sample(logits, rng, cfg, seen)
    tok = jnp.where(done, cfg.pad_id, tok)
    seen = seen.at[jnp.arange(b), tok].set(True)
    return tok, seen, done | jnp.isin(tok, eos)

  rng, sub = jax.random.split(rng)
  done0 = jnp.zeros((b,), bool)
  tok, seen, done = pick(logits, sub, seen, done0)
  out = jnp.full((b, cfg.max_new_tokens), cfg.pad_id, jnp.int32).at[:, 0].set(tok)
  lengths = jnp.ones((b,), jnp.int32)

  def cond(state: DecodeState):
    return (state.i < cfg.max_new_tokens) & ~jnp.all(state.done)

  def body(state: DecodeState) -> DecodeState:
    logits, cache = step(state.tok[:, None], state.cache)
    rng, sub = jax.random.split(state.rng)
    new_tok, seen, new_done = pick(logits[:, -1], sub, state.seen, state.done)
    out = jax.lax.dynamic_update_index_in_dim(state.out, new_tok, state.i, 1)
    lengths = state.lengths + (~state.done).astype(jnp.int32)
    return DecodeState(i=state.i + 1, out=out, lengths=lengths, cache=cache, done=new_done,
                       tok=new_tok, seen=seen, rng=rng)

  state = DecodeState(i=jnp.int32(1), out=out, lengths=lengths, cache=cache, done=done,
                      tok=tok, seen=seen, rng=rng)
  state = jax.lax.while_loop(cond, body, state)
  return state.out, state.lengths, state.cache
