"""``LM``: a frozen decoder with its params, tokenizer, cache factory and compiled paths."""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax import sampling
from c2cjax.models.cache import KVCache
from c2cjax.models.config import ModelConfig
from c2cjax.models.layers import Decoder


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


class LM:
  """A frozen LLM: ``apply(params, tokens, cache) -> (logits, cache)`` and ``generate``.

  Attributes:
    config: the :class:`ModelConfig`.
    params: the param pytree (plain dicts of arrays).
    tokenizer: a Hugging Face tokenizer, or None.
    dtype: compute/param dtype.
  """

  def __init__(self, config: ModelConfig, params: Any, tokenizer=None, dtype=jnp.float32,
               source: str | None = None, remat: bool = False, scan_layers: bool = True):
    """``params`` must match ``scan_layers`` (stacked ``layers`` vs ``layers_{i}``);
    see :meth:`with_layout`."""
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.dtype = dtype
    self.source = source
    self.remat, self.scan_layers = remat, scan_layers
    self.module = Decoder(config, dtype=dtype, remat=remat, scan_layers=scan_layers)
    self._apply = jax.jit(self._apply_impl, static_argnames=("return_hidden",),
                          donate_argnames=("cache",))
    self._generate = jax.jit(self._generate_impl, static_argnames=("cfg", "max_len"))

  def with_layout(self, *, scan_layers: bool | None = None, remat: bool | None = None) -> "LM":
    """The same model with stacked (scanned) or per-layer params, and/or remat."""
    from c2cjax.models.convert import stack_layers, unstack_layers
    scan = self.scan_layers if scan_layers is None else scan_layers
    params = self.params
    if params is not None and scan != self.scan_layers:
      n = self.config.num_layers
      params = stack_layers(params, n) if scan else unstack_layers(params, n)
    return LM(self.config, params, self.tokenizer, self.dtype, self.source,
              self.remat if remat is None else remat, scan)

  def __repr__(self):
    return f"LM({self.config.arch}, layers={self.config.num_layers}, source={self.source!r})"

  # --- cache and forward -----------------------------------------------------------------
  def init_cache(self, batch: int, max_len: int, dtype=None, holes: bool = False) -> KVCache:
    """An empty cache; ``holes`` records pads inside sequences (see ``KVCache``)."""
    c = self.config
    return KVCache.init(c.num_layers, batch, c.num_kv_heads, max_len, c.head_dim,
                        dtype or self.dtype, holes)

  def init_params(self, rng: jax.Array):
    """Random params of the right structure (tests, shapes)."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    return self.module.init(rng, tokens, self.init_cache(1, 1))["params"]

  def _apply_impl(self, params, tokens, cache, attention_mask=None, keep=None,
                  return_hidden=False):
    return self.module.apply({"params": params}, tokens, cache, attention_mask, keep,
                             return_hidden)

  def apply(self, params, tokens, cache: KVCache | None = None, *, attention_mask=None,
            keep=None, return_hidden: bool = False):
    """Runs ``tokens [B, S]`` on ``cache`` (a fresh one of length S when None).

    Args:
      params: param pytree.
      tokens: [B, S] int32.
      cache: KVCache with room for S more tokens; donated (do not reuse the input).
      attention_mask: [B, S], 1 for real tokens; only for the first call on an empty cache
        with left-padded prompts.
      keep: [B, T] bool, cache slots to keep instead of overwriting (C2C fused slots).
    Returns:
      logits [B, S, V] float32 (or final hidden [B, S, D] with ``return_hidden``), cache.
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    if cache is None:
      cache = self.init_cache(tokens.shape[0], tokens.shape[1])
    else:
      self.check_room(cache, tokens.shape[1])
    return self._apply(params, tokens, cache, attention_mask, keep, return_hidden)

  def module_apply(self, params, tokens, cache, attention_mask=None, keep=None, *,
                   last_only: bool = False):
    """Un-jitted forward, for use inside a caller's own ``jax.jit`` (C2C, training)."""
    return self.module.apply({"params": params}, tokens, cache, attention_mask, keep,
                             last_only=last_only)

  def module_prefill(self, params, tokens, cache, attention_mask=None) -> KVCache:
    """Un-jitted cache-only prefill (skips the LM head)."""
    return self.module.apply({"params": params}, tokens, cache, attention_mask,
                             return_hidden=True)[1]

  @staticmethod
  def check_room(cache: KVCache, n: int):
    end = cache.end
    if not isinstance(end, jax.core.Tracer) and int(end) + n > cache.max_len:
      raise ValueError(
          f"{n} new tokens do not fit in the cache: {int(end)} of {cache.max_len} slots are "
          f"used; make the cache longer (max_len)")

  # --- generation ---------------------------------------------------------------------------
  def _generate_impl(self, params, tokens, mask, rng, cfg: sampling.SamplingConfig, max_len: int):
    cache = self.init_cache(tokens.shape[0], max_len)
    logits, cache = self.module.apply({"params": params}, tokens, cache, mask, last_only=True)
    seen = (sampling.seen_tokens(tokens, mask, self.config.vocab_size)
            if cfg.repetition_penalty != 1.0 else None)
    step = lambda tok, cache: self.module.apply({"params": params}, tok, cache)
    out, lengths, _ = sampling.decode(step, cache, logits[:, -1], rng, cfg, seen)
    return out, lengths

  def sampling_config(self, **kw) -> sampling.SamplingConfig:
    """Sampling settings with this model's EOS / pad ids filled in."""
    eos = kw.pop("eos_ids", None)
    if eos is None:
      eos = set(self.config.eos_token_ids)
      tok = self.tokenizer
      if tok is not None and tok.eos_token_id is not None:
        eos.add(int(tok.eos_token_id))
      eos = tuple(sorted(eos))
    pad = self.config.pad_token_id
    if pad is None:
      pad = eos[0] if eos else 0
    return sampling.SamplingConfig(eos_ids=tuple(eos), pad_id=int(pad), **kw)

  def encode_prompts(self, prompts: Sequence, chat: bool | None = None,
                     multiple_of: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Strings, chat message lists or id lists -> left-padded ids and mask [B, P]."""
    ids = []
    for p in prompts:
      if isinstance(p, str) and not chat:
        ids.append(self.tokenizer(p, add_special_tokens=True)["input_ids"])
      elif isinstance(p, str) or (isinstance(p, (list, tuple)) and p and isinstance(p[0], dict)):
        from c2cjax.data import chat as chat_lib  # the data path owns chat templating
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        ids.append(chat_lib.encode_prompt(self.tokenizer, messages))
      else:
        ids.append([int(t) for t in p])
    if any(len(x) == 0 for x in ids):
      raise ValueError("empty prompt")
    width = _round_up(max(len(x) for x in ids), multiple_of)
    pad = self.config.pad_token_id or 0
    tokens = np.full((len(ids), width), pad, np.int32)
    mask = np.zeros((len(ids), width), np.int32)
    for i, x in enumerate(ids):
      tokens[i, width - len(x):] = x
      mask[i, width - len(x):] = 1
    return tokens, mask

  def generate(self, prompts: Sequence, *, max_new_tokens: int = 32, temperature: float = 0.0,
               top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
               seed: int = 0, max_len: int | None = None, chat: bool | None = None,
               eos_ids: Sequence[int] | None = None, params=None, return_tokens: bool = False):
    """Generates continuations for a batch of prompts (ragged lengths are left-padded).

    Args:
      prompts: strings (tokenised as-is unless ``chat``), chat message lists (templated
        with the tokenizer's chat template) or lists of token ids.
      max_len: cache length; default prompt + max_new_tokens. A prompt that does not fit
        is a clear error.
    Returns:
      decoded strings (or ``(tokens [B, N], lengths [B])`` with ``return_tokens``).
    """
    tokens, mask = self.encode_prompts(prompts, chat=chat)
    cfg = self.sampling_config(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        repetition_penalty=repetition_penalty,
        eos_ids=tuple(eos_ids) if eos_ids is not None else None)
    need = tokens.shape[1] + max_new_tokens - 1  # the last sampled token is never written
    max_len = max_len or need
    if need > max_len:
      raise ValueError(
          f"prompt of {tokens.shape[1]} tokens (padded) + {max_new_tokens} new tokens is longer "
          f"than the cache (max_len={max_len})")
    out, lengths = self._generate(params if params is not None else self.params,
                                  jnp.asarray(tokens), jnp.asarray(mask),
                                  jax.random.PRNGKey(seed), cfg, max_len)
    out, lengths = np.asarray(out), np.asarray(lengths)
    if return_tokens:
      return out, lengths
    return self.decode_texts(out, lengths, cfg)

  def decode_texts(self, out: np.ndarray, lengths: np.ndarray, cfg: sampling.SamplingConfig):
    texts = []
    for row, n in zip(out, lengths):
      row = [t for t in row[:n].tolist() if t not in cfg.eos_ids]
      texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
    return texts
