"""The examples run, and reproduce what the library's own classes compute."""

import importlib.util
import pathlib

import numpy as np

from c2cjax.c2c import C2C

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_c2c_in_jax_reproduces_generate():
  ex = _load("c2c_in_jax")
  (receiver, sharer, fuser), (tokens, mask, sharer_tokens), out, lengths = ex.main(8)
  c2c = C2C(receiver, [sharer], [fuser])
  want, want_lengths, _ = c2c.generate_ids(tokens, mask, (sharer_tokens,), max_new_tokens=8,
                                           eos_ids=())
  np.testing.assert_array_equal(out, want)
  np.testing.assert_array_equal(lengths, want_lengths)
  # and the fusion matters: the receiver alone says something else
  alone, _, _ = receiver.generate_ids(tokens, mask, max_new_tokens=8, eos_ids=())
  assert not np.array_equal(out, alone)
