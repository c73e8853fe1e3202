"""Who a model is: the facts a run manifest and a fuser checkpoint record about an LLM.

``identity(lm)`` is a small JSON-ready dict: the ``name`` it was loaded from, the structure
a fuser depends on (``arch``, ``num_layers``, ``num_kv_heads``, ``head_dim``, ``hidden_size``,
``vocab_size``) and, optionally, a ``fingerprint`` of the weights. :func:`differences` lists
the fields in which two identities disagree, for error messages that name both sides.

The fingerprint is a SHA-256 over every param's path, shape and dtype and over up to 4,096
evenly spaced values of each param: cheap enough for billion-parameter models (it reads a few
MB), and any retrained, re-quantised or differently seeded checkpoint changes it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import jax
import numpy as np

STRUCTURE = ("arch", "num_layers", "num_kv_heads", "head_dim", "hidden_size", "vocab_size")
_SAMPLES = 4096


@jax.jit
def _samples(params: Any) -> Any:
  """Up to ``_SAMPLES`` evenly spaced values of each leaf, flat. One program for the whole
  tree: run eagerly, the per-leaf reshapes and strided slices compile one by one (2 s a
  model)."""
  def one(leaf):
    flat = leaf.reshape(-1)
    return flat[::max(1, flat.size // _SAMPLES)][:_SAMPLES]
  return jax.tree.map(one, params)


def weight_fingerprint(params: Any) -> str:
  """A short hex fingerprint of a param pytree (see the module docstring)."""
  h = hashlib.sha256()
  samples = jax.device_get(_samples(params))
  for (path, leaf), sample in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                  jax.tree.leaves(samples)):
    shape, dtype = tuple(np.shape(leaf)), np.dtype(leaf.dtype)
    h.update(f"{jax.tree_util.keystr(path)}:{shape}:{dtype.name};".encode())
    if np.size(sample):
      h.update(np.ascontiguousarray(sample).tobytes())
  return h.hexdigest()[:16]


def identity(lm, *, name: str | None = None, fingerprint: bool = True) -> dict[str, Any]:
  """The identity of an :class:`~c2cjax.models.LM` (``name`` defaults to its source)."""
  c = lm.config
  out = {"name": name or lm.source or "", "arch": c.arch, "num_layers": c.num_layers,
         "num_kv_heads": c.num_kv_heads, "head_dim": c.head_dim, "hidden_size": c.hidden_size,
         "vocab_size": c.vocab_size}
  if fingerprint and lm.params is not None:
    out["fingerprint"] = weight_fingerprint(lm.params)
  return out


def differences(expected: dict[str, Any], actual: dict[str, Any],
                fields: Sequence[str] = STRUCTURE) -> list[str]:
  """``["num_layers: 3 (expected) != 6 (actual)", ...]`` over ``fields`` both sides have."""
  return [f"{k}: {expected[k]!r} != {actual[k]!r}" for k in fields
          if k in expected and k in actual and expected[k] != actual[k]]


def describe(ident: dict[str, Any]) -> str:
  """``"qwen3 'Qwen/Qwen3-0.6B' (28 layers, 8 kv heads x 128, vocab 151936)"``."""
  return (f"{ident.get('arch', '?')} {ident.get('name', '')!r} ({ident.get('num_layers', '?')} "
          f"layers, {ident.get('num_kv_heads', '?')} kv heads x {ident.get('head_dim', '?')}, "
          f"vocab {ident.get('vocab_size', '?')})")
