"""C2C generation: receiver + sharers + fusers, compiled end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c2cjax import fuse as fuse_lib
from c2cjax.c2c import C2C, Fuser
from c2cjax.models.tiny import tiny_lm


def small_fuser(receiver, sharer, seed, gate=None):
  f = Fuser.init(receiver, sharer, jax.random.PRNGKey(seed), hidden_dim=32, intermediate_dim=48)
  if gate is not None:
    f = Fuser(_set_gates(f.params, gate), f.config, f.layer_map)
  return f


def _set_gates(params, value):
  params = dict(params)
  for k in ("key_gate_logit", "value_gate_logit"):
    params[k] = jnp.full_like(params[k], value)
  return params


@pytest.fixture(scope="module")
def models():
  return tiny_lm("qwen3", seed=0), tiny_lm("gemma3", seed=1), tiny_lm("llama3", seed=2)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, 128, size=(2, 12)).astype(np.int32)
  mask = np.ones_like(tokens)
  tokens[1, :3], mask[1, :3] = 0, 0  # ragged: left padding
  sharer = tuple(rng.integers(3, 128, size=(2, 12)).astype(np.int32) for _ in range(2))
  return tokens, mask, sharer


def test_closed_gates_equal_receiver_alone(models):
  r, s, _ = models
  c2c = C2C(r, [s], [small_fuser(r, s, 0, gate=-1.0)])
  tokens, mask, sharer = _batch()
  out, lengths, _ = c2c.generate_ids(tokens, mask, sharer[:1], max_new_tokens=6, eos_ids=())
  alone = r._generate(r.params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.PRNGKey(0),
                      r.sampling_config(max_new_tokens=6, eos_ids=()), 12 + 5)
  np.testing.assert_array_equal(out, np.asarray(alone[0]))


def test_open_gates_equal_manual_pipeline(models):
  r, s, _ = models
  f = small_fuser(r, s, 1, gate=3.0)
  c2c = C2C(r, [s], [f])
  tokens, mask, sharer = _batch(1)
  logits, cache = c2c.prefill(tokens, mask, sharer[:1], max_len=20)

  # by hand: prefill both on all but the last token, fuse, then the last token
  _, rc = r.apply(r.params, tokens[:, :-1], r.init_cache(2, 11), attention_mask=mask[:, :-1])
  _, sc = s.apply(s.params, sharer[0][:, :-1], s.init_cache(2, 11), attention_mask=mask[:, :-1])
  fused = fuse_lib.fuse(f.params, rc, sc, f.layer_map, jnp.asarray(mask[:, :-1], bool),
                        config=f.config)
  ref_logits, ref_cache = r.apply(r.params, tokens[:, -1:], fused.pad_to(20))
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits[:, -1]), atol=1e-5)
  np.testing.assert_allclose(np.asarray(cache.k), np.asarray(ref_cache.k), atol=1e-5)
  # fusion really changed something
  plain, _ = r.apply(r.params, tokens, attention_mask=mask)
  assert np.abs(np.asarray(plain[:, -1]) - np.asarray(logits)).max() > 1e-3


def test_per_request_sharer_choice_and_modes(models):
  r, s1, s2 = models
  f1, f2 = small_fuser(r, s1, 2, gate=3.0), small_fuser(r, s2, 3, gate=3.0)
  tokens, mask, sharer = _batch(2)
  both = C2C(r, [s1, s2], [f1, f2])
  only1 = C2C(r, [s1], [f1])
  a, _ = both.prefill(tokens, mask, sharer, sharers=[0])
  b, _ = only1.prefill(tokens, mask, sharer[:1])
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  par, _ = both.prefill(tokens, mask, sharer)
  seq, _ = C2C(r, [s1, s2], [f1, f2], mode="sequential").prefill(tokens, mask, sharer)
  assert not np.allclose(np.asarray(par), np.asarray(a), atol=1e-4)  # sharer 2 adds something
  assert not np.allclose(np.asarray(par), np.asarray(seq), atol=1e-6)
  none, _ = both.prefill(tokens, mask, sharer, sharers=[])
  alone, _ = r.apply(r.params, tokens, attention_mask=mask)
  np.testing.assert_allclose(np.asarray(none), np.asarray(alone[:, -1]), atol=1e-5)


def test_bad_inputs_are_clear_errors(models):
  r, s, _ = models
  c2c = C2C(r, [s], [small_fuser(r, s, 0)])
  tokens, mask, sharer = _batch()
  with pytest.raises(ValueError, match="longer than the cache"):
    c2c.generate_ids(tokens, mask, sharer[:1], max_new_tokens=8, max_len=10)
  with pytest.raises(ValueError, match="at least 2 tokens"):
    c2c.generate_ids(tokens[:, :1], mask[:, :1], (sharer[0][:, :1],))
  with pytest.raises(ValueError, match="out of range"):
    c2c.prefill(tokens, mask, sharer[:1], sharers=[3])
  wrong = small_fuser(r, models[2], 0)  # built for another sharer's cache shape
  with pytest.raises(ValueError, match="other cache shapes"):
    C2C(r, [s], [wrong])
