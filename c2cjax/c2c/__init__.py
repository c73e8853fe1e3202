"""C2C: a receiver LLM that answers on a KV cache fused from one or more sharers.

- ``core``: :class:`Spec` (the static modules, fuser configs, layer maps, mode) and the
  pure device programs, callable inside a user's own ``jax.jit``: :func:`fuse_caches`,
  :func:`fused_cache`, :func:`prefill`, :func:`response_step`, :func:`decode_step`,
  :func:`decode`, :func:`generate` (its docstring draws the data path).
- ``release``: the release alignment scheme's programs (``c2cjax.sections``: message runs
  fused in turn), :func:`prefill_release` and :func:`generate_release`, and their checks.
- ``host``: :class:`C2C`, the host side over them: encoding and alignment, vocab maps,
  checks, jit and detokenising.
"""

from c2cjax.c2c.core import (Spec, decode, decode_step, fuse_caches, fused_cache, generate,
                             prefill, response_step)
from c2cjax.c2c.host import C2C
from c2cjax.c2c.release import (check_release_options, check_release_widths,
                                generate_release, prefill_release)
from c2cjax.fuse import Fuser, layer_map_by_name

__all__ = ["C2C", "Fuser", "Spec", "check_release_options", "check_release_widths", "decode",
           "decode_step", "fuse_caches", "fused_cache", "generate", "generate_release",
           "layer_map_by_name", "prefill", "prefill_release", "response_step"]
