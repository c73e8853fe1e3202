"""C2C generation: receiver + sharers + fusers, compiled end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c2cjax import fuse as fuse_lib, sampling
from c2cjax import c2c as c2c_lib
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
  alone, _, _ = r.generate_ids(tokens, mask, max_new_tokens=6, eos_ids=(), max_len=12 + 5)
  np.testing.assert_array_equal(out, alone)


def test_open_gates_equal_manual_pipeline(models):
  r, s, _ = models
  f = small_fuser(r, s, 1, gate=3.0)
  c2c = C2C(r, [s], [f])
  tokens, mask, sharer = _batch(1)
  logits, cache = c2c.prefill(tokens, mask, sharer[:1], max_len=20)

  # by hand: prefill both on all but the last token, fuse, then the last token
  _, rc = r.apply(r.params, tokens[:, :-1], r.init_cache(2, 11), attention_mask=mask[:, :-1])
  _, sc = s.apply(s.params, sharer[0][:, :-1], s.init_cache(2, 11), attention_mask=mask[:, :-1])
  fused = fuse_lib.fuse((f.params,), rc, (sc,), (f.layer_map,),
                        jnp.asarray(mask[:, :-1], bool), config=(f.config,))
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
  with pytest.raises(ValueError, match="trained for other models:\n  sharer 0: "):
    C2C(r, [s], [wrong])
  with pytest.warns(UserWarning), pytest.raises(ValueError, match="other cache shapes"):
    C2C(r, [s], [wrong], allow_mismatch=True)  # the override cannot run other shapes


# --- fuse_last / fuse_response -------------------------------------------------------------
FLAGS = [(True, False), (False, True), (True, True)]


def _same_tokenizer(*lms):
  """The models with one shared stand-in tokenizer: C2C aligns them by identity."""
  from types import SimpleNamespace
  from c2cjax.models.lm import LM
  tok = SimpleNamespace(eos_token_id=None)
  return [LM(m.config, m.params, tok, source=m.source) for m in lms]


def _two_pass_reference(r, sharers, fusers, tokens, mask, sharer_ids, out, maps, fuse_last,
                        fuse_response, mode="parallel"):
  """Teacher-forced C2C logits [B, N, V] for the generated tokens ``out`` [B, N].

  Prompt + generated tokens, un-jitted C2C pieces: the receiver and every sharer alone on
  the whole sequence (sharer ids of generated tokens through ``maps``), fuse the chosen
  slots, rerun the receiver on the fused cache keeping them (``train.c2c_nll``'s scheme).
  Position t reads fused slots <= t, exactly what generation builds one token at a time.
  """
  p, gen = tokens.shape[1], out[:, :-1]
  seq = np.concatenate([tokens, gen], 1)
  real = np.concatenate([mask, np.ones_like(gen)], 1).astype(bool)
  t = np.arange(seq.shape[1])
  fuse_mask = real & ((t < p - 1) | ((t == p - 1) & fuse_last) | ((t >= p) & fuse_response))
  _, rc = r.apply(r.params, seq, attention_mask=real)
  caches = []
  for s, ids, m in zip(sharers, sharer_ids, maps):
    _, c = s.apply(s.params, np.concatenate([ids, m[gen]], 1), attention_mask=real)
    caches.append(c)
  fused = fuse_lib.fuse(tuple(f.params for f in fusers), rc, tuple(caches),
                        tuple(f.layer_map for f in fusers), jnp.asarray(fuse_mask),
                        config=tuple(f.config for f in fusers), mode=mode)
  logits, _ = r.apply(r.params, seq, fused.replace(end=jnp.int32(0)), keep=jnp.asarray(fuse_mask))
  return np.asarray(logits[:, p - 1:])


@pytest.mark.parametrize("fuse_last,fuse_response", FLAGS)
def test_fuse_options_closed_gates_equal_receiver_alone(models, fuse_last, fuse_response):
  r, s, _ = models
  c2c = C2C(r, [s], [small_fuser(r, s, 0, gate=-1.0)], vocab_maps=[np.arange(128)[::-1]])
  tokens, mask, sharer = _batch()
  out, _, _ = c2c.generate_ids(tokens, mask, sharer[:1], max_new_tokens=6, eos_ids=(),
                               fuse_last=fuse_last, fuse_response=fuse_response)
  alone, _, _ = r.generate_ids(tokens, mask, max_new_tokens=6, eos_ids=(), max_len=12 + 5)
  np.testing.assert_array_equal(out, alone)


def _stepped_logits(c2c, tokens, mask, sharer_ids, out, fuse_last, fuse_response):
  """Logits [B, N, V] of C2C's own prefill and decode step, fed the tokens ``out`` [B, N]
  (teacher-forced: what the decode loop computes, compared in full, not via argmax)."""
  active = tuple(range(len(c2c.sharers)))
  maps = c2c.options(active, fuse_last, fuse_response)[2]
  max_len = tokens.shape[1] + out.shape[1] - 1

  def run(params, maps, tokens, mask, sharer_ids, out):
    logits, state = c2c_lib.prefill(c2c.spec, params, tokens, mask, sharer_ids, active,
                                    max_len, fuse_last, fuse_response)
    step = c2c_lib.decode_step(c2c.spec, params, active, maps, fuse_response)

    def body(state, tok):
      step_logits, state = step(tok[:, None], state)
      return state, step_logits[:, -1]

    _, rest = jax.lax.scan(body, state, out[:, :-1].T)
    return jnp.concatenate([logits[:, None], rest.transpose(1, 0, 2)], 1)

  return np.asarray(jax.jit(run)(c2c.params, maps, jnp.asarray(tokens), jnp.asarray(mask),
                                 tuple(jnp.asarray(t) for t in sharer_ids), jnp.asarray(out)))


@pytest.mark.parametrize("fuse_last,fuse_response", FLAGS)
def test_fuse_options_equal_two_pass_reference(models, fuse_last, fuse_response):
  s, r = _same_tokenizer(models[1], models[2])  # untied llama receiver: varied greedy tokens
  f = small_fuser(r, s, 4, gate=3.0)
  c2c = C2C(r, [s], [f])  # one tokenizer: generated tokens reach the sharer as they are
  assert c2c.aligners[0].identity
  tokens, mask, sharer = _batch(3)
  out, lengths, _ = c2c.generate_ids(tokens, mask, sharer[:1], max_new_tokens=5, eos_ids=(),
                                     fuse_last=fuse_last, fuse_response=fuse_response)
  assert (lengths == 5).all()
  ref = _two_pass_reference(r, [s], [f], tokens, mask, sharer[:1], out, [np.arange(128)],
                            fuse_last, fuse_response)
  np.testing.assert_array_equal(out, ref.argmax(-1))
  got = _stepped_logits(c2c, tokens, mask, sharer[:1], out, fuse_last, fuse_response)
  np.testing.assert_allclose(got, ref, atol=1e-4)
  default, _ = c2c.prefill(tokens, mask, sharer[:1])
  if fuse_last:  # the option changes the first token's logits
    assert np.abs(got[:, 0] - np.asarray(default)).max() > 1e-3
  else:
    np.testing.assert_allclose(got[:, 0], np.asarray(default), atol=1e-5)
  if fuse_response:  # ... and this one the later tokens'
    plain = _two_pass_reference(r, [s], [f], tokens, mask, sharer[:1], out, [np.arange(128)],
                                fuse_last, False)
    assert np.abs(plain[:, 1:] - ref[:, 1:]).max() > 1e-2


def test_fuse_response_two_sharers_vocab_map_sampled(models):
  s2, s1, r = models
  fusers = [small_fuser(r, s1, 5, gate=3.0), small_fuser(r, s2, 6, gate=3.0)]
  maps = [np.random.default_rng(0).permutation(128), (np.arange(128) * 7) % 128]
  c2c = C2C(r, [s1, s2], fusers, vocab_maps=maps)
  tokens, mask, sharer = _batch(4)
  out, _, cfg = c2c.generate_ids(tokens, mask, sharer, max_new_tokens=6, eos_ids=(),
                                 temperature=1.0, seed=3, fuse_last=True, fuse_response=True)
  ref = _two_pass_reference(r, [s1, s2], fusers, tokens, mask, sharer, out, maps, True, True)
  np.testing.assert_allclose(_stepped_logits(c2c, tokens, mask, sharer, out, True, True), ref,
                             atol=1e-4)
  rng = jax.random.PRNGKey(3)  # decode's key schedule: one split per token
  for i in range(out.shape[1]):
    rng, sub = jax.random.split(rng)
    np.testing.assert_array_equal(out[:, i], sampling.sample(jnp.asarray(ref[:, i]), sub, cfg))
  # the public prefill returns the decode state: fused, receiver-alone and sharer caches
  first, (fused, alone, caches) = c2c.prefill(tokens, mask, sharer, max_len=20, fuse_last=True,
                                              fuse_response=True)
  np.testing.assert_allclose(np.asarray(first), ref[:, 0], atol=1e-4)
  assert fused.max_len == alone.max_len == caches[0].max_len == caches[1].max_len == 20
  assert int(fused.end) == int(alone.end) == int(caches[1].end) == 12


def test_fuse_response_errors(models):
  r, s, _ = models
  c2c = C2C(r, [s], [small_fuser(r, s, 0)])
  tokens, mask, sharer = _batch()
  with pytest.raises(ValueError, match="vocab_maps"):  # no tokenizers, no map
    c2c.generate_ids(tokens, mask, sharer[:1], max_new_tokens=2, fuse_response=True)
  with pytest.raises(ValueError, match="sharer caches too"):
    c2c.generate_ids(tokens, mask, sharer[:1], max_new_tokens=8, max_len=12,
                     fuse_response=True)
  with pytest.raises(ValueError, match=r"must be \[128\] ints"):
    C2C(r, [s], [small_fuser(r, s, 0)], vocab_maps=[np.arange(10)])
  with pytest.raises(ValueError, match="outside sharer 0's vocabulary"):
    C2C(r, [s], [small_fuser(r, s, 0)], vocab_maps=[np.arange(128) + 1])


def test_per_layer_receiver_generates_the_same(models):
  """C2C on a receiver (and sharer) loaded per layer (``scan_layers=False``, the faster
  layout for batch-1 decode on CPU) gives the stacked layout's tokens and logits."""
  r, s, _ = models
  f = small_fuser(r, s, 4, gate=3.0)
  tokens, mask, sharer = _batch(4)
  stacked = C2C(r, [s], [f])
  flat = C2C(r.with_layout(scan_layers=False), [s.with_layout(scan_layers=False)], [f])
  a, ca = stacked.prefill(tokens, mask, sharer[:1], max_len=20)
  b, cb = flat.prefill(tokens, mask, sharer[:1], max_len=20)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  np.testing.assert_allclose(np.asarray(ca.k), np.asarray(cb.k), atol=1e-5)
  out_a = stacked.generate_ids(tokens, mask, sharer[:1], max_new_tokens=6, eos_ids=())[0]
  out_b = flat.generate_ids(tokens, mask, sharer[:1], max_new_tokens=6, eos_ids=())[0]
  np.testing.assert_array_equal(out_a, out_b)
