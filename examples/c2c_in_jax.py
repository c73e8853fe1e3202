"""C2C in your own JAX code: two caches in, fused cache out, decode -- public names only.

A receiver and a sharer (tiny random models here; any ``c2cjax.load_model`` pair works),
one fuser, and one ``jax.jit`` of ours that prefills both models, fuses the sharer's cache
into the receiver's, runs the last prompt token on the fused cache and decodes greedily.
It computes exactly what ``C2C.generate`` does.

  python examples/c2c_in_jax.py
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import c2cjax.fuse as fuse_lib
from c2cjax import sampling
from c2cjax.models import lm
from c2cjax.models.tiny import tiny_lm


def build(seed: int = 0):
  """Receiver, sharer (both tiny, same vocabulary) and a fuser with open gates."""
  receiver = tiny_lm("qwen3", seed=seed)
  sharer = tiny_lm("llama3", seed=seed + 1)
  fuser = fuse_lib.Fuser.init(receiver, sharer, jax.random.PRNGKey(seed + 2), hidden_dim=32,
                              intermediate_dim=48)
  params = jax.tree_util.tree_map_with_path(  # open every gate so the fusion matters
      lambda path, x: jnp.full_like(x, 3.0) if "gate_logit" in str(path[-1]) else x,
      fuser.params)
  return receiver, sharer, fuse_lib.Fuser(params, fuser.config, fuser.layer_map)


@functools.partial(jax.jit, static_argnames=("rmod", "smod", "config", "layer_map", "cfg"))
def fuse_and_decode(rparams, sparams, fparams, tokens, mask, sharer_tokens, *, rmod, smod,
                    config, layer_map, cfg: sampling.SamplingConfig):
  """Left-padded prompts [B, P] (and aligned sharer ids) -> tokens [B, N], lengths [B]."""
  b, p = tokens.shape
  head, last = slice(0, p - 1), slice(p - 1, p)
  # 1. two caches: each model prefills all prompt tokens but the last.
  rcache = lm.prefill_cache(rmod, rparams, tokens[:, head], lm.init_cache(rmod, b, p - 1),
                            mask[:, head])
  scache = lm.prefill_cache(smod, sparams, sharer_tokens[:, head],
                            lm.init_cache(smod, b, p - 1), mask[:, head])
  # 2. fused cache out: the sharer's keys/values projected into the receiver's.
  fused = fuse_lib.fuse((fparams,), rcache, (scache,), (layer_map,),
                        mask[:, head].astype(bool), config=(config,))
  # 3. the last prompt token on the fused cache, then the receiver decodes alone.
  max_len = p + cfg.max_new_tokens - 1
  logits, cache = lm.forward(rmod, rparams, tokens[:, last], fused.pad_to(max_len))
  step = lambda tok, cache: lm.forward(rmod, rparams, tok, cache)
  out, lengths, _ = sampling.decode(step, cache, logits[:, -1], jax.random.PRNGKey(0), cfg)
  return out, lengths


def main(max_new_tokens: int = 8):
  receiver, sharer, fuser = build()
  rng = np.random.default_rng(0)
  tokens = rng.integers(3, 128, size=(2, 12)).astype(np.int32)
  mask = np.ones_like(tokens)
  tokens[1, :4], mask[1, :4] = 0, 0  # the second prompt is shorter: left padding
  sharer_tokens = tokens.copy()  # same vocabulary: the ids align 1:1
  cfg = sampling.SamplingConfig(max_new_tokens=max_new_tokens, eos_ids=(),
                                pad_id=receiver.config.pad_token_id or 0)
  out, lengths = fuse_and_decode(
      receiver.params, sharer.params, fuser.params, tokens, mask, sharer_tokens,
      rmod=receiver.module, smod=sharer.module, config=fuser.config,
      layer_map=fuser.layer_map, cfg=cfg)
  return (receiver, sharer, fuser), (tokens, mask, sharer_tokens), np.asarray(out), \
      np.asarray(lengths)


if __name__ == "__main__":
  _, _, out, lengths = main()
  print("tokens:\n", out, "\nlengths:", lengths)
