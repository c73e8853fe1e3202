"""C2C's device programs for the release alignment scheme, and their input checks.

The release scheme (:mod:`c2cjax.sections`: sections, pads inside prompts, message runs
fused in turn) prefills the prompt run by run (:mod:`c2cjax.release_prefill`), then decodes
as :func:`c2cjax.c2c.core.decode`. Pure functions of a static
:class:`~c2cjax.c2c.core.Spec`, callable inside jit; the checks run on the host.
"""

from __future__ import annotations

import numpy as np

from c2cjax import sampling
from c2cjax.c2c.core import Spec, decode, fuse_caches
from c2cjax.models import lm as lm_lib
from c2cjax.release_prefill import release_prefill


def prefill_release(spec: Spec, params, tokens, mask, sharer_tokens, sharer_masks, runs,
                    active: tuple[int, ...], num_runs: int, max_len: int):
  """The release scheme's prefill: logits [B, V] and the fused cache (``max_len`` slots).

  Args:
    tokens, mask: [B, P] receiver ids and mask (0 at left padding and at pads inside);
    sharer_tokens, sharer_masks: tuples over all sharers of [B, P];
    runs: [B, P] from :func:`c2cjax.release_prefill.fused_runs`; num_runs (static): its max.
  """
  rparams, sparams, fparams = params
  b, p = tokens.shape
  caches = tuple(lm_lib.prefill_cache(spec.sharers[i], sparams[i], sharer_tokens[i],
                                      lm_lib.init_cache(spec.sharers[i], b, p, holes=True),
                                      sharer_masks[i]) for i in active)
  fuse = lambda rc, cs, tm: fuse_caches(spec, fparams, rc, cs, tm, active)
  logits, cache = release_prefill(spec.receiver, rparams, tokens, mask, caches, fuse, runs,
                                  num_runs if active else 0, max_len)
  return logits[:, -1], cache


def generate_release(spec: Spec, params, tokens, mask, sharer_tokens, sharer_masks, runs, rng,
                     cfg: sampling.SamplingConfig, max_len: int, active: tuple[int, ...],
                     num_runs: int):
  """:func:`prefill_release` then :func:`decode`: tokens [B, N] and lengths [B]."""
  logits, cache = prefill_release(spec, params, tokens, mask, sharer_tokens, sharer_masks,
                                  runs, active, num_runs, max_len)
  seen = (sampling.seen_tokens(tokens, mask, spec.receiver.cfg.vocab_size)
          if cfg.repetition_penalty != 1.0 else None)
  return decode(spec, params, logits, cache, rng, cfg, seen=seen)


def check_release_options(sharer_masks, fuse_last, fuse_response) -> None:
  """A ``fuse_mask`` (the release scheme) needs sharer masks and none of the offsets
  scheme's options."""
  if fuse_last or fuse_response or sharer_masks is None:
    raise ValueError("a fuse_mask (the release scheme) needs sharer_masks, and "
                     "fuse_last / fuse_response are options of the offsets scheme")


def check_release_widths(tokens, sharer_tokens, sharer_masks) -> None:
  """The release scheme's sharer rows are aligned slot for slot to the receiver's."""
  for i, (t, m) in enumerate(zip(sharer_tokens, sharer_masks)):
    if m is None or np.shape(t)[1] != np.shape(tokens)[1]:
      raise ValueError(f"release scheme: sharer {i} needs a mask and ids of the receiver's "
                       f"width {np.shape(tokens)[1]} (a sharer context is an offsets-scheme "
                       "option)")
