"""Shared decoder layers (Flax Linen) for every supported architecture.

Axis letters used in einsums and docstrings:
  B batch, S new tokens, T cache slots, D hidden, F mlp hidden, V vocab,
  N query heads, K kv heads, G query heads per kv head (N = K * G), H head dim, L layers.

Params are plain pytrees; per-layer params are stacked on a leading L axis and the block
runs under ``nn.scan`` (one compiled block). Logical axis names (``embed``, ``heads``,
``kv_heads``, ``mlp``, ``vocab``, ``layers``...) let ``c2cjax.sharding`` place them.
"""

from __future__ import annotations

from typing import Any

from flax import struct
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from c2cjax import sharding
from c2cjax.kernels import matvec
from c2cjax.models import attention
from c2cjax.models.cache import KVCache
from c2cjax.models.config import ModelConfig

Dtype = Any


def _param(module: nn.Module, name: str, shape, axes, dtype, init=nn.initializers.normal(0.02)):
  if module.has_variable("params", name):
    value = module.get_variable("params", name)
    if isinstance(value, matvec.LayerOf):  # read in place (Decoder's stacked batch-1 loop)
      return value
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


# The per-layer weight matrices a batch-1 decode reads in place from the stacked params.
_MATRICES = frozenset({"q", "k", "v", "o", "gate", "up", "down"})


class RMSNorm(nn.Module):
  """``x * rsqrt(mean(x^2) + eps) * (offset + w)``, computed in fp32 like HF."""

  eps: float = 1e-6
  offset: float = 0.0  # 1.0 for Gemma's (1 + w)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.offset else nn.initializers.ones
    w = _param(self, "scale", (x.shape[-1],), ("norm",), self.dtype, init)
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    if self.offset:  # Gemma multiplies in fp32, then casts
      return (y * (self.offset + w.astype(jnp.float32))).astype(x.dtype)
    return w * y.astype(x.dtype)  # Llama/Qwen cast first, then multiply


def rope_tables(inv_freq: np.ndarray, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos, sin of shape [B, S, H/2] for integer positions [B, S]."""
  angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """HF's rotate-half RoPE. x: [B, S, heads, H]; cos, sin: [B, S, H/2]."""
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  c, s = cos[:, :, None, :], sin[:, :, None, :]
  return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)


class Attention(nn.Module):
  """GQA attention that writes its new keys/values into the layer's cache slice."""

  cfg: ModelConfig
  dtype: Dtype = jnp.float32
  # Batch-1 products through kernels.matvec where it applies. The Decoder turns it off
  # inside its ``nn.scan`` (there the kernel would read copied slices) and runs stacked
  # batch-1 decode as its own layer loop instead (``Decoder._layer_loop``).
  kernel: bool = True

  @nn.compact
  def __call__(self, x, rope, k_cache, v_cache, mask, write_at, keep, append: bool = False):
    """One layer's attention.

    Args:
      x: [B, S, D] normed hidden states of the new tokens.
      rope: (cos, sin), each [B, S, H/2], for this layer's RoPE base.
      k_cache, v_cache: [B, K, T, H] this layer's cache before the call.
      mask: [B, S, T] bool, which slots each new token may attend to.
      write_at: [] int32 slot of the first new token.
      keep: None or [B, T] bool; slots whose existing cache entry must be kept instead of
        overwritten by the new tokens' keys/values (C2C fused slots).
      append: (static) leave the cache as it is and return only the new tokens' rows
        (decode: ``Decoder`` writes every layer's rows at once); needs ``keep`` None.
    Returns:
      out [B, S, D], new k_cache and v_cache [B, K, T, H] (``append``: the new rows
      [B, K, S, H]).
    """
    c = self.cfg
    n, k, h, d = c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size
    wq = _param(self, "q", (d, n, h), ("embed", "heads", "head_dim"), self.dtype)
    wk = _param(self, "k", (d, k, h), ("embed", "kv_heads", "head_dim"), self.dtype)
    wv = _param(self, "v", (d, k, h), ("embed", "kv_heads", "head_dim"), self.dtype)
    wo = _param(self, "o", (n, h, d), ("heads", "head_dim", "embed"), self.dtype)
    b, s = x.shape[:2]
    # Each projection is one [D, X] matmul (reshapes of row-major params are free), which
    # is a single matrix-vector product at batch-1 decode (kernels.matvec).
    q = matvec.linear(x, wq.reshape(d, n * h), kernel=self.kernel).reshape(b, s, n, h)
    kn = matvec.linear(x, wk.reshape(d, k * h), kernel=self.kernel).reshape(b, s, k, h)
    vn = matvec.linear(x, wv.reshape(d, k * h), kernel=self.kernel).reshape(b, s, k, h)
    if c.qkv_bias:
      zeros = nn.initializers.zeros
      q = q + _param(self, "q_bias", (n, h), ("heads", "head_dim"), self.dtype, zeros)
      kn = kn + _param(self, "k_bias", (k, h), ("kv_heads", "head_dim"), self.dtype, zeros)
      vn = vn + _param(self, "v_bias", (k, h), ("kv_heads", "head_dim"), self.dtype, zeros)
    if c.qk_norm:
      q = RMSNorm(c.rms_eps, c.norm_offset, self.dtype, name="q_norm")(q)
      kn = RMSNorm(c.rms_eps, c.norm_offset, self.dtype, name="k_norm")(kn)
    q = apply_rope(q, *rope)
    kn = apply_rope(kn, *rope)

    # The new keys/values in HF layout [B, K, S, H], for slots [write_at, write_at + S).
    kn = kn.transpose(0, 2, 1, 3).astype(k_cache.dtype)
    vn = vn.transpose(0, 2, 1, 3).astype(v_cache.dtype)
    qg = sharding.constrain(q.reshape(b, s, k, n // k, h), sharding.GROUPED_QUERIES)
    if append:  # decode: read the cache as it is; the Decoder writes the new rows after
      with jax.named_scope("attend"):
        out = attention.attend_appended(qg, k_cache, v_cache, kn, vn, mask, write_at,
                                        scale=c.scale, softcap=c.attn_softcap)
      return self._project_out(out, wo), kn, vn
    new_k = jax.lax.dynamic_update_slice(k_cache, kn, (0, 0, write_at, 0))
    new_v = jax.lax.dynamic_update_slice(v_cache, vn, (0, 0, write_at, 0))
    if keep is not None:
      new_k = jnp.where(keep[:, None, :, None], k_cache, new_k)
      new_v = jnp.where(keep[:, None, :, None], v_cache, new_v)

    new_k = sharding.constrain(new_k, sharding.CACHE_LAYER)
    new_v = sharding.constrain(new_v, sharding.CACHE_LAYER)
    with jax.named_scope("attend"):
      out = attention.attend(qg, new_k, new_v, mask, scale=c.scale, softcap=c.attn_softcap,
                             implementation=c.attention, block=c.attention_block,
                             causal=True)  # Decoder's masks: causal in cache slots
    return self._project_out(out, wo), new_k, new_v

  def _project_out(self, out, wo):
    """[B, S, N, H] attention output -> [B, S, D]."""
    b, s, n, h = out.shape
    out = sharding.constrain(out, sharding.HEADS_OUT)
    # One [N*H, D] matmul: with the 3-D einsum XLA on CPU copied a transpose of ``wo`` every
    # call (a weight-sized copy per layer and decode step); merging (n, h) is a bitcast.
    return matvec.linear(out.reshape(b, s, n * h), wo.reshape(n * h, wo.shape[-1]),
                         kernel=self.kernel)


class MLP(nn.Module):
  """Gated MLP: SwiGLU (Llama/Qwen) or GeGLU with tanh GELU (Gemma)."""

  cfg: ModelConfig
  dtype: Dtype = jnp.float32
  # Batch-1 products through kernels.matvec where it applies. The Decoder turns it off
  # inside its ``nn.scan`` (there the kernel would read copied slices) and runs stacked
  # batch-1 decode as its own layer loop instead (``Decoder._layer_loop``).
  kernel: bool = True

  @nn.compact
  def __call__(self, x):
    d, f = self.cfg.hidden_size, self.cfg.intermediate_size
    gate = _param(self, "gate", (d, f), ("embed", "mlp"), self.dtype)
    up = _param(self, "up", (d, f), ("embed", "mlp"), self.dtype)
    down = _param(self, "down", (f, d), ("mlp", "embed"), self.dtype)
    g = matvec.linear(x, gate, kernel=self.kernel)
    act = jax.nn.silu(g) if self.cfg.activation == "silu" else jax.nn.gelu(g, approximate=True)
    up = act * matvec.linear(x, up, kernel=self.kernel)
    return matvec.linear(up, down, kernel=self.kernel)


@struct.dataclass
class BlockInputs:
  """What every layer reads besides its own cache slice (broadcast over the layer scan)."""

  rope_global: Any  # rope tables for global layers (``rope_tables`` of the query positions)
  rope_local: Any  # rope tables for local (sliding-window) layers
  mask_global: jax.Array  # [B, S, T] bool, causal attention mask over the cache slots
  mask_local: jax.Array  # [B, S, T] bool, the same within the sliding window
  write_at: jax.Array  # int32 scalar, the first cache slot the S new tokens write
  keep: jax.Array | None = None  # [B, T] bool, cache slots kept instead of overwritten
  # Static: each layer returns only its new rows [B, K, S, H] and leaves its cache slice
  # as it is; the Decoder writes all layers' rows afterwards (decode, ``appends``).
  append: bool = struct.field(pytree_node=False, default=False)


def appends(new_tokens: int, keep) -> bool:
  """Whether a call writes its new keys/values after all layers instead of in each
  layer (``attention.attend_appended``): one new token (decode) and no kept slots. Each
  layer then reads its cache slice in place: writing into the slice first made XLA copy
  every layer's slice in and the whole cache out, each step (RESULTS.md, seventeenth
  session)."""
  return new_tokens == 1 and keep is None


class Block(nn.Module):
  """One decoder layer; scanned over layers, each step reading/writing its cache slice."""

  cfg: ModelConfig
  dtype: Dtype = jnp.float32
  # Batch-1 products through kernels.matvec where it applies. The Decoder turns it off
  # inside its ``nn.scan`` (there the kernel would read copied slices) and runs stacked
  # batch-1 decode as its own layer loop instead (``Decoder._layer_loop``).
  kernel: bool = True

  @nn.compact
  def __call__(self, carry, xs, shared: BlockInputs):
    x = carry
    is_local, k_l, v_l = xs
    rope_global, rope_local = shared.rope_global, shared.rope_local
    mask_global, mask_local = shared.mask_global, shared.mask_local
    write_at, keep = shared.write_at, shared.keep
    c = self.cfg
    norm = lambda name: RMSNorm(c.rms_eps, c.norm_offset, self.dtype, name=name)

    if c.local_rope is not None or c.sliding_window:
      rope = jax.tree.map(lambda a, b: jnp.where(is_local, a, b), rope_local, rope_global)
      mask = jnp.where(is_local, mask_local, mask_global)
    else:
      rope, mask = rope_global, mask_global

    a, k_l, v_l = Attention(c, self.dtype, self.kernel, name="attn")(
        norm("attn_norm")(x), rope, k_l, v_l, mask, write_at, keep, shared.append)
    if c.sandwich_norm:
      a = norm("post_attn_norm")(a)
    x = x + a
    m = MLP(c, self.dtype, self.kernel, name="mlp")(norm("mlp_norm")(x))
    if c.sandwich_norm:
      m = norm("post_mlp_norm")(m)
    x = x + m
    return x, (k_l, v_l)


REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # save nothing: recompute the block
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(remat: bool | str):
  """``Decoder.remat`` -> (rematerialise?, checkpoint policy). False / "none": save
  everything (no remat); True / "full" / "nothing_saveable": recompute each block in the
  backward pass; "dots_saveable" (and "dots_with_no_batch_dims_saveable"): keep the
  matmul outputs, recompute the rest."""
  if remat in (False, None, "none"):
    return False, None
  if remat is True:
    remat = "full"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {remat!r}; choose from "
                     f"{['none'] + sorted(REMAT_POLICIES)}")
  return True, REMAT_POLICIES[remat]


class Decoder(nn.Module):
  """Embeddings, scanned blocks, final norm and LM head.

  ``__call__(tokens [B, S], cache, attention_mask=None, keep=None) -> (logits [B, S, V], cache)``;
  ``return_hidden`` gives the final normed hidden states instead of logits (a cache-only
  prefill skips the LM head), ``last_only`` keeps only the last position.
  """

  cfg: ModelConfig
  dtype: Dtype = jnp.float32
  remat: bool | str = False  # see remat_policy
  scan_layers: bool = True
  # Batch-1 products (projections, LM head) through kernels.matvec where it applies: per
  # layer directly, stacked through a layer loop that reads each layer's weights in place
  # (``_layer_loop``). False: XLA's own everywhere (a static field, so each setting
  # compiles apart).
  kernel: bool = True

  @nn.compact
  def __call__(self, tokens, cache: KVCache, attention_mask=None, keep=None,
               return_hidden: bool = False, last_only: bool = False):
    c = self.cfg
    b, s = tokens.shape
    embed = _param(self, "embed", (c.vocab_size, c.hidden_size), ("vocab", "embed"), self.dtype)
    x = jnp.take(embed, tokens, axis=0).astype(self.dtype)  # weights may be stored narrower
    if c.embed_scale is not None:
      x = x * jnp.asarray(c.embed_scale, self.dtype)

    # A fresh prefill's first real token sets where each sequence starts: left padding
    # moves it right; right padding (training) leaves it at 0, causality hides the tail.
    if attention_mask is not None:
      first = jnp.argmax(attention_mask.astype(bool), axis=-1).astype(jnp.int32)
      cache = cache.replace(start=jnp.where(cache.end == 0, cache.end + first, cache.start))
    write_at = cache.end
    end = write_at + s
    slots = jnp.arange(cache.max_len, dtype=jnp.int32)
    q_slots = write_at + jnp.arange(s, dtype=jnp.int32)
    q_pos = q_slots[None, :] - cache.start[:, None]  # [B, S]
    if attention_mask is not None and cache.holes is not None:  # pads inside the sequence
      new = ~attention_mask.astype(bool) & (q_slots[None, :] >= cache.start[:, None])
      cache = cache.replace(holes=jax.lax.dynamic_update_slice(cache.holes, new, (0, write_at)))
    valid = (slots[None, :] >= cache.start[:, None]) & (slots[None, :] < end)  # [B, T]
    if cache.holes is not None:
      valid = valid & ~cache.holes
    causal = slots[None, :] <= q_slots[:, None]  # [S, T]
    mask_global = valid[:, None, :] & causal[None]
    mask_local = mask_global
    if c.sliding_window:
      near = slots[None, :] > q_slots[:, None] - c.sliding_window
      mask_local = mask_global & near[None]
    rope_global = rope_tables(c.rope.inv_freq(c.head_dim), q_pos)
    rope_local = (rope_tables(c.local_rope.inv_freq(c.head_dim), q_pos)
                  if c.local_rope is not None else rope_global)

    on, policy = remat_policy(self.remat)
    block = nn.remat(Block, prevent_cse=not self.scan_layers, policy=policy) if on else Block
    xs = (jnp.asarray(c.local_flags), cache.k, cache.v)
    append = appends(s, keep)
    shared = BlockInputs(rope_global, rope_local, mask_global, mask_local, write_at, keep,
                         append)
    in_place = self.scan_layers and self._reads_layers_in_place(x)
    if in_place:
      x, (k_all, v_all) = self._layer_loop(x, xs, shared)
    elif self.scan_layers:  # one compiled block; params stacked on a leading "layers" axis
      blocks = nn.scan(
          block, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(0, nn.broadcast), length=c.num_layers,
          metadata_params={nn.PARTITION_NAME: "layers"})(c, self.dtype, False, name="layers")
      x, (k_all, v_all) = blocks(x, xs, shared)
    else:
      # Unrolled layers with separate params (MaxText's scan_layers=False): on CPU, XLA
      # copies each layer's slice out of stacked weights, so batch-1 decode, which is
      # bound by reading the weights, runs faster this way.
      ks, vs = [], []
      for i in range(c.num_layers):
        x, (k_i, v_i) = block(c, self.dtype, self.kernel, name=f"layers_{i}")(
            x, jax.tree.map(lambda a: a[i], xs), shared)
        ks.append(k_i)
        vs.append(v_i)
      k_all, v_all = jnp.stack(ks), jnp.stack(vs)
    if append:  # k_all, v_all: every layer's new rows [L, B, K, S, H], one in-place write
      put = lambda full, rows: jax.lax.dynamic_update_slice_in_dim(full, rows, write_at, axis=3)
      k_all, v_all = put(cache.k, k_all), put(cache.v, v_all)
    cache = cache.replace(k=k_all, v=v_all, end=end)

    if last_only:  # prefill for generation: only the last position's logits are needed
      x = x[:, -1:]
    x = RMSNorm(c.rms_eps, c.norm_offset, self.dtype, name="final_norm")(x)
    if return_hidden:
      return x, cache
    kernel = self.kernel and (in_place or not self.scan_layers)
    if c.tie_embeddings:
      return vocab_logits(x, embed, "vd", c.final_softcap, kernel), cache
    head = _param(self, "lm_head", (c.hidden_size, c.vocab_size), ("embed", "vocab"), self.dtype)
    return vocab_logits(x, head, "dv", c.final_softcap, kernel), cache


  def _reads_layers_in_place(self, x) -> bool:
    """Batch-1 decode on CPU with stacked params (kernels.matvec applies): scan over the
    layers with each projection reading its layer of the stacked weight in place. Under
    ``nn.scan`` XLA copies every layer's weight slices before the products, which made
    the stacked layout's decode 1.6-2x slower than the per-layer one (RESULTS.md, sixteenth
    session). Never while initialising (that builds the stacked params) or for more rows."""
    return (self.kernel and not self.is_initializing() and x.dtype == jnp.float32
            and int(np.prod(x.shape[:-1])) <= matvec.MAX_ROWS and matvec.active())

  def _layer_loop(self, x, xs, shared: BlockInputs):
    """The layer scan with the params as loop invariants: a ``lax.scan`` over layer
    indices and the cache slices (as ``nn.scan`` slices them); the seven matrices of layer
    ``i`` go to the block as ``matvec.LayerOf(stacked, i)``, the small params (norm scales,
    biases) as slices. Carrying the whole cache through a ``fori_loop`` instead, with an
    update per layer, was 12-24 ms a token slower on SmolLM2 (RESULTS.md, sixteenth
    session)."""
    stacked = nn.meta.unbox(self.variables["params"]["layers"])
    block = Block(self.cfg, self.dtype, True, parent=None)

    def layer(x, xs_i):
      i, is_local, k_l, v_l = xs_i
      params = jax.tree_util.tree_map_with_path(
          lambda path, a: (matvec.LayerOf(a, i) if path[-1].key in _MATRICES
                           else jax.lax.dynamic_index_in_dim(a, i, keepdims=False)), stacked)
      return block.apply({"params": params}, x, (is_local, k_l, v_l), shared)

    layers = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)
    return jax.lax.scan(layer, x, (layers, *xs))


def vocab_logits(x, table, spec: str, softcap: float | None = None, kernel: bool = True):
  """fp32 logits [B, S, V] of hidden states x [B, S, D]: the LM head ``table`` is the tied
  embedding (``spec`` "vd", [V, D]) or ``lm_head`` ("dv", [D, V]); Gemma's final soft cap.
  ``kernel``: batch-1 products may use kernels.matvec (False: always the einsum)."""
  if kernel and matvec.use_kernel(x, table):  # batch-1 decode on CPU: the streaming kernel
    logits = matvec.linear(x, table, out_in=spec == "vd")
  else:
    logits = jnp.einsum(f"bsd,{spec}->bsv", x, table, preferred_element_type=jnp.float32)
  if softcap:
    logits = jnp.tanh(logits / softcap) * softcap
  return logits
