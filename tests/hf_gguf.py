"""transformers' own GGUF loading (the reference the real-weight tests compare with), sped up.

``AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`` parses the GGUF file twice (the
config, then the tensors) and rebuilds gguf-py's tensor-name table once per submodule (about
400 times for SmolLM2): 29 s for SmolLM2 and 68 s for Gemma 3 270M on 2 cores. Both are pure
functions of their arguments, so memoising them for the call changes nothing it returns:
17 s and 38 s. The weights, config and numerics are transformers' own.
"""

from __future__ import annotations

import contextlib
import functools
import os


@contextlib.contextmanager
def _memoised_gguf():
  import gguf  # transformers imports these names from the package at call time
  saved = gguf.GGUFReader, gguf.get_tensor_name_map
  gguf.GGUFReader = functools.lru_cache(maxsize=2)(saved[0])
  gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(saved[1])
  try:
    yield
  finally:
    gguf.GGUFReader, gguf.get_tensor_name_map = saved


def causal_lm(path: str | os.PathLike):
  """transformers' fp32 ``AutoModelForCausalLM`` of the GGUF file ``path``, in eval mode."""
  import pathlib

  import torch
  import transformers as tf

  path = pathlib.Path(path)
  with _memoised_gguf():
    return tf.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                   dtype=torch.float32).eval()
