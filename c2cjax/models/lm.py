"""A frozen decoder: pure functions over ``(module, params)`` and the thin ``LM`` class.

The pure functions take the Flax :class:`~c2cjax.models.layers.Decoder` module (hashable:
pass it as a static argument or close over it) and a param pytree, so research code can
call them inside its own ``jax.jit``::

  params = lm.init_params(module, rng)                             # random, boxed (jit it)
  logits, cache = lm.forward(module, params, tokens, cache)       # any tokens on a cache
  cache = lm.prefill_cache(module, params, tokens, cache, mask)    # cache only, no LM head
  logits, cache = lm.prefill(module, params, tokens, mask, max_len)  # prompt -> last logits
  out, lengths = lm.generate(module, params, tokens, mask, rng, cfg, max_len)

:class:`LM` holds module, params and tokenizer, jits those functions and adds the host
side (prompt encoding through :mod:`c2cjax.text`, detokenising).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax import inputs, runtime, sampling, text
from c2cjax.models.cache import KVCache
from c2cjax.models.config import ModelConfig
from c2cjax.models.layers import Decoder


# --- pure functions (call inside jit) -------------------------------------------------------
def init_cache(module: Decoder, batch: int, max_len: int, dtype=None,
               holes: bool = False) -> KVCache:
  """An empty cache [L, batch, K, max_len, H] for ``module``'s config; ``holes`` records
  pads inside sequences (see :class:`KVCache`)."""
  c = module.cfg
  return KVCache.init(c.num_layers, batch, c.num_kv_heads, max_len, c.head_dim,
                      dtype or module.dtype, holes)


def init_params(module: Decoder, rng: jax.Array):
  """Random params of ``module``'s structure (boxed with their logical axes), traced on
  one token. Jit it (:meth:`LM.init_params` does): run eagerly, Flax's initialisers
  dispatch hundreds of small ops, each compiled on its own (7 s for a tiny model, against
  2 s for the one program)."""
  return module.init(rng, jnp.zeros((1, 1), jnp.int32), init_cache(module, 1, 1))["params"]


def forward(module: Decoder, params, tokens: jax.Array, cache: KVCache, attention_mask=None,
            keep=None, *, last_only: bool = False, return_hidden: bool = False):
  """Runs ``tokens [B, S]`` on ``cache`` (room for S more slots).

  Args:
    attention_mask: [B, S], 1 for real tokens; only for the first call on an empty cache
      with left-padded prompts.
    keep: [B, T] bool, cache slots to keep instead of overwriting (C2C fused slots).
    last_only: the LM head on the last position only (logits [B, 1, V]).
  Returns:
    logits [B, S, V] float32 (or final hidden [B, S, D] with ``return_hidden``), cache.
  """
  return module.apply({"params": params}, tokens, cache, attention_mask, keep,
                      return_hidden=return_hidden, last_only=last_only)


def prefill_cache(module: Decoder, params, tokens: jax.Array, cache: KVCache,
                  attention_mask=None) -> KVCache:
  """The cache after ``tokens [B, S]`` (skips the LM head)."""
  return module.apply({"params": params}, tokens, cache, attention_mask, return_hidden=True)[1]


def prefill(module: Decoder, params, tokens: jax.Array, mask: jax.Array, max_len: int):
  """Left-padded prompts ``tokens``/``mask`` [B, P] -> logits [B, V] after the last token
  and the cache (``max_len`` slots, ``end = P``).

  All tokens but the last fill the cache, then the last token runs on it: the same
  structure as :func:`c2cjax.c2c.prefill`, so C2C with closed gates reproduces it exactly.
  """
  b, s = tokens.shape
  cache = prefill_cache(module, params, tokens[:, :-1], init_cache(module, b, s - 1),
                        mask[:, :-1])
  logits, cache = forward(module, params, tokens[:, -1:], cache.pad_to(max_len))
  return logits[:, -1], cache


def generate(module: Decoder, params, tokens: jax.Array, mask: jax.Array, rng: jax.Array,
             cfg: sampling.SamplingConfig, max_len: int):
  """Left-padded prompts [B, P] -> tokens [B, N] and lengths [B] (``cfg`` static).

  One prefill pass over the whole prompt into a ``max_len`` cache, then
  :func:`c2cjax.sampling.decode`.
  """
  cache = init_cache(module, tokens.shape[0], max_len)
  logits, cache = forward(module, params, tokens, cache, mask, last_only=True)
  seen = (sampling.seen_tokens(tokens, mask, module.cfg.vocab_size)
          if cfg.repetition_penalty != 1.0 else None)
  step = lambda tok, cache: forward(module, params, tok, cache)
  out, lengths, _ = sampling.decode(step, cache, logits[:, -1], rng, cfg, seen)
  return out, lengths


def check_room(cache: KVCache, n: int):
  """A clear error when ``n`` more tokens do not fit ``cache`` (host side, concrete ends)."""
  end = cache.end
  if not isinstance(end, jax.core.Tracer) and int(end) + n > cache.max_len:
    raise ValueError(
        f"{n} new tokens do not fit in the cache: {int(end)} of {cache.max_len} slots are "
        f"used; make the cache longer (max_len)")


# --- the host-side class --------------------------------------------------------------------
_jit_init_params = jax.jit(init_params, static_argnums=0)


class LM:
  """A frozen LLM: module, params, tokenizer; jitted :func:`forward`, :func:`generate`.

  Attributes:
    config: the :class:`ModelConfig`.
    module: the Flax :class:`Decoder` (the first argument of this module's functions).
    params: the param pytree (plain dicts of arrays).
    tokenizer: a Hugging Face tokenizer, or None.
    dtype: compute/param dtype.
    weight_dtype: how the weight matrices are stored when not ``dtype`` (None: as ``dtype``).
  """

  def __init__(self, config: ModelConfig, params: Any, tokenizer=None, dtype=jnp.float32,
               source: str | None = None, remat: bool = False, scan_layers: bool = True,
               kernel: bool = True, weight_dtype=None):
    """``params`` must match ``scan_layers`` (stacked ``layers`` vs ``layers_{i}``);
    see :meth:`with_layout`. ``kernel=False``: batch-1 products use XLA's own instead of
    ``c2cjax.kernels.matvec`` (which ``C2CJAX_CPU_MATVEC=0`` turns off process-wide).
    ``weight_dtype=jnp.bfloat16``: the weight matrices are stored (cast here) in bfloat16
    while activations stay in ``dtype``; on CPU with the kernel and the per-layer layout,
    batch-1 decode then reads half the bytes (benchmarks/decode.py --layouts unscanned-bf16)."""
    if not isinstance(kernel, bool):  # "off" or "0" would read as True
      raise TypeError(f"LM(kernel=...) must be True or False, got {kernel!r}")
    if weight_dtype is not None:
      try:
        dt = jnp.dtype(weight_dtype)
      except TypeError:  # not a dtype at all ("bf16", "nonsense")
        dt = None
      if dt not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"LM(weight_dtype=...) must be float32 or bfloat16, got "
                         f"{weight_dtype!r}")
      weight_dtype = dt
      if params is not None:
        from c2cjax.models.convert import cast_weights
        params = cast_weights(params, weight_dtype)
    self.weight_dtype = weight_dtype
    self.config = config
    self.params = params
    self.tokenizer = tokenizer
    self.dtype = dtype
    self.source = source
    self.remat, self.scan_layers, self.kernel = remat, scan_layers, kernel
    self.module = Decoder(config, dtype=dtype, remat=remat, scan_layers=scan_layers,
                          kernel=kernel)
    # XLA options of this model's jitted programs (runtime.compiler_options, at construction)
    self.xla_options = xla = runtime.compiler_options()
    self._apply = jax.jit(forward, static_argnums=0,
                          static_argnames=("return_hidden", "last_only"),
                          donate_argnames=("cache",), compiler_options=xla)
    self._generate = jax.jit(generate, static_argnums=(0, 5, 6), compiler_options=xla)
    self._prefill = jax.jit(prefill, static_argnums=(0, 4), compiler_options=xla)

  def with_layout(self, *, scan_layers: bool | None = None, remat: bool | None = None,
                  kernel: bool | None = None, weight_dtype=None) -> "LM":
    """The same model with stacked (scanned) or per-layer params, and/or remat, and/or the
    CPU matrix-vector kernel on or off, and/or its weight matrices stored as
    ``weight_dtype`` (see ``__init__``)."""
    from c2cjax.models.convert import stack_layers, unstack_layers
    scan = self.scan_layers if scan_layers is None else scan_layers
    params = self.params
    if params is not None and scan != self.scan_layers:
      n = self.config.num_layers
      params = stack_layers(params, n) if scan else unstack_layers(params, n)
    return LM(self.config, params, self.tokenizer, self.dtype, self.source,
              self.remat if remat is None else remat, scan,
              self.kernel if kernel is None else kernel,
              self.weight_dtype if weight_dtype is None else weight_dtype)

  def __repr__(self):
    return f"LM({self.config.arch}, layers={self.config.num_layers}, source={self.source!r})"

  # --- cache and forward -----------------------------------------------------------------
  def init_cache(self, batch: int, max_len: int, dtype=None, holes: bool = False) -> KVCache:
    return init_cache(self.module, batch, max_len, dtype, holes)

  def init_params(self, rng: jax.Array):
    """Random params of the right structure (tests, shapes), jitted."""
    return _jit_init_params(self.module, rng)

  def apply(self, params, tokens, cache: KVCache | None = None, *, attention_mask=None,
            keep=None, return_hidden: bool = False):
    """Jitted :func:`forward` of ``tokens [B, S]`` on ``cache`` (a fresh one of length S
    when None; donated: do not reuse the input)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if cache is None:
      cache = self.init_cache(tokens.shape[0], tokens.shape[1])
    else:
      check_room(cache, tokens.shape[1])
    return self._apply(self.module, params, tokens, cache, attention_mask, keep,
                       return_hidden=return_hidden)

  def module_apply(self, params, tokens, cache, attention_mask=None, keep=None, *,
                   last_only: bool = False):
    """Un-jitted :func:`forward`, for use inside a caller's own ``jax.jit``."""
    return forward(self.module, params, tokens, cache, attention_mask, keep,
                   last_only=last_only)

  def module_prefill(self, params, tokens, cache, attention_mask=None) -> KVCache:
    """Un-jitted :func:`prefill_cache` (skips the LM head)."""
    return prefill_cache(self.module, params, tokens, cache, attention_mask)

  check_room = staticmethod(check_room)

  def prefill(self, tokens, mask, max_len: int, params=None):
    """Jitted :func:`prefill`: logits [B, V] after left-padded prompts [B, P] and the cache
    (``max_len`` slots)."""
    return self._prefill(self.module, self.params if params is None else params,
                         jnp.asarray(tokens), jnp.asarray(mask), max_len=max_len)

  # --- generation ---------------------------------------------------------------------------
  def sampling_config(self, eos_ids: Sequence[int] | None = None,
                      **kw) -> sampling.SamplingConfig:
    """Sampling settings (:class:`~c2cjax.sampling.SamplingConfig` fields) with this
    model's EOS / pad ids filled in."""
    if eos_ids is None:
      eos = set(self.config.eos_token_ids)
      tok = self.tokenizer
      if tok is not None and tok.eos_token_id is not None:
        eos.add(int(tok.eos_token_id))
      eos_ids = tuple(sorted(eos))
    eos_ids = tuple(int(e) for e in eos_ids)
    pad = self.config.pad_token_id
    if pad is None:
      pad = eos_ids[0] if eos_ids else 0
    return sampling.SamplingConfig(eos_ids=eos_ids, pad_id=int(pad), **kw)

  def encode_prompts(self, prompts: Sequence, chat: bool | None = None,
                     multiple_of: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Strings, chat message lists or id lists -> left-padded ids and mask [B, P]
    (:func:`c2cjax.text.encode_prompts`)."""
    return text.encode_prompts(self.tokenizer, prompts, chat=chat,
                               pad_id=self.config.pad_token_id or 0, multiple_of=multiple_of)

  def generate(self, prompts: Sequence, *, seed: int = 0, max_len: int | None = None,
               chat: bool | None = None, eos_ids: Sequence[int] | None = None, params=None,
               return_tokens: bool = False, **sampling_kw):
    """Generates continuations for a batch of prompts (ragged lengths are left-padded).

    Args:
      prompts: strings (tokenised as-is unless ``chat``), chat message lists (templated
        with the tokenizer's chat template) or lists of token ids.
      max_len: cache length; default prompt + max_new_tokens. A prompt that does not fit
        is a clear error.
      **sampling_kw: :class:`~c2cjax.sampling.SamplingConfig` fields (``max_new_tokens``,
        ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``).
    Returns:
      decoded strings (or ``(tokens [B, N], lengths [B])`` with ``return_tokens``).
    """
    tokens, mask = self.encode_prompts(prompts, chat=chat)
    out, lengths, cfg = self.generate_ids(tokens, mask, seed=seed, max_len=max_len,
                                          eos_ids=eos_ids, params=params, **sampling_kw)
    if return_tokens:
      return out, lengths
    return self.decode_texts(out, lengths, cfg)

  def generate_ids(self, tokens, mask, *, seed: int = 0, max_len: int | None = None,
                   eos_ids: Sequence[int] | None = None, params=None, **sampling_kw):
    """Token-level :meth:`generate` on left-padded ``tokens``/``mask`` [B, P] (as they are:
    no re-padding). Returns tokens [B, N], lengths [B] (numpy) and the sampling config.

    Raises ValueError for ids outside the vocabulary and for a prompt + ``max_new_tokens``
    longer than the model's ``max_position_embeddings`` (positions it was never trained on).
    """
    cfg = self.sampling_config(eos_ids=eos_ids, **sampling_kw)
    c = self.config
    inputs.check_token_batch(tokens, mask, vocab_size=c.vocab_size,
                             max_positions=c.max_position_embeddings,
                             max_new_tokens=cfg.max_new_tokens)
    max_len = sampling.cache_length(tokens.shape[1], cfg, max_len)
    out, lengths = self._generate(self.module, self.params if params is None else params,
                                  jnp.asarray(tokens), jnp.asarray(mask),
                                  jax.random.PRNGKey(seed), cfg, max_len)
    return np.asarray(out), np.asarray(lengths), cfg

  def decode_texts(self, out: np.ndarray, lengths: np.ndarray, cfg: sampling.SamplingConfig):
    """Generated ids [B, N], lengths [B] -> strings (EOS and special tokens dropped)."""
    return text.decode_texts(self.tokenizer, out, lengths, cfg.eos_ids)
