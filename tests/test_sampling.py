"""Sampling helpers (c2cjax.sampling) against their reference definitions."""

import jax.numpy as jnp
import numpy as np

from c2cjax import sampling


def test_greedy_is_argmax_with_ties_and_nans():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 1000)).astype(np.float32)
  logits[1, [5, 700]] = 50.0  # a tie: the first index wins
  logits[2, [3, 900]] = np.nan  # NaNs: the first NaN, as jnp.argmax
  logits[3, :] = -np.inf
  logits[4, 999] = np.inf
  logits[5, :] = 1.0
  got = np.asarray(sampling.greedy(jnp.asarray(logits)))
  np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1)))
  assert got.dtype == np.int32 and got[1] == 5 and got[2] == 3 and got[5] == 0
