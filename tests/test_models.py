"""Parity of the Flax ports with transformers' PyTorch models (fp32, tiny random configs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import c2cjax
from c2cjax.models import KVCache, load_model
from tests import hf_tiny

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", params=hf_tiny.KINDS)
def pair(request, tmp_path_factory):
  return hf_tiny.loaded(request.param, tmp_path_factory)


def _tokens(b, s, seed=0, vocab=128):
  return np.random.default_rng(seed).integers(3, vocab, size=(b, s)).astype(np.int64)


def test_logits_match_transformers(pair):
  kind, hf, lm = pair
  ids = _tokens(2, 20)  # > gemma's sliding window of 8
  with torch.no_grad():
    ref = hf(torch.from_numpy(ids)).logits.numpy()
  logits, _ = lm.apply(lm.params, ids)
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)


def test_cache_matches_hf_past_key_values(pair):
  kind, hf, lm = pair
  ids = _tokens(2, 12, seed=1)
  with torch.no_grad():
    pkv = hf(torch.from_numpy(ids), use_cache=True).past_key_values
  _, cache = lm.apply(lm.params, ids, lm.init_cache(2, 16))
  assert int(cache.end) == 12
  for i, layer in enumerate(pkv.layers):
    k_ref, v_ref = layer.keys.numpy(), layer.values.numpy()
    n = k_ref.shape[2]  # sliding layers keep only their window: compare the tail
    k, v = cache.layer(i)
    np.testing.assert_allclose(np.asarray(k[:, :, 12 - n:12]), k_ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(v[:, :, 12 - n:12]), v_ref, atol=1e-5)


def test_cached_decode_equals_full_forward(pair):
  kind, hf, lm = pair
  ids = _tokens(2, 18, seed=2)
  full, _ = lm.apply(lm.params, ids)
  cache = lm.init_cache(2, 24)
  logits, cache = lm.apply(lm.params, ids[:, :10], cache)
  steps = [logits]
  for t in range(10, 18):
    logits, cache = lm.apply(lm.params, ids[:, t:t + 1], cache)
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate([np.asarray(s) for s in steps], 1),
                             np.asarray(full), atol=1e-4)


def test_left_padding_matches_unpadded(pair):
  kind, hf, lm = pair
  ids = _tokens(1, 13, seed=3)[0]
  short = ids[:9]
  tokens = np.zeros((2, 13), np.int32)
  tokens[0] = ids
  tokens[1, 4:] = short
  mask = np.ones((2, 13), np.int32)
  mask[1, :4] = 0
  logits, cache = lm.apply(lm.params, tokens, lm.init_cache(2, 16), attention_mask=mask)
  alone, _ = lm.apply(lm.params, short[None])
  np.testing.assert_allclose(np.asarray(logits[1, 4:]), np.asarray(alone[0]), atol=1e-4)
  np.testing.assert_array_equal(np.asarray(cache.start), [0, 4])
  # and one decode step on top of the padded cache
  nxt = np.array([[5], [7]], np.int32)
  step, _ = lm.apply(lm.params, nxt, cache)
  ref, _ = lm.apply(lm.params, np.concatenate([short, [7]])[None])
  np.testing.assert_allclose(np.asarray(step[1, 0]), np.asarray(ref[0, -1]), atol=1e-4)


def test_greedy_generate_matches_transformers(pair):
  kind, hf, lm = pair
  prompts = [_tokens(1, 7, seed=4)[0].tolist(), _tokens(1, 11, seed=5)[0].tolist()]
  out, lengths = lm.generate(prompts, max_new_tokens=8, return_tokens=True, eos_ids=[])
  for row, p in zip(out, prompts):
    with torch.no_grad():
      ref = hf.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False,
                        eos_token_id=None, pad_token_id=0)[0, len(p):].numpy()
    np.testing.assert_array_equal(row, ref)
  np.testing.assert_array_equal(lengths, [8, 8])


def test_param_tree_matches_module_init(pair):
  kind, hf, lm = pair
  init = lm.init_params(jax.random.PRNGKey(0))
  init = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, init,
                      is_leaf=lambda x: hasattr(x, "value"))
  shapes = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)
  assert shapes(init) == shapes(lm.params)


def test_unknown_architecture_is_clear_error():
  import transformers as tf
  with pytest.raises(ValueError, match="unknown architecture.*supported: gemma3"):
    c2cjax.models.config_from_hf(tf.GPT2Config())


def test_mismatched_tensor_shape_names_it(tmp_path):
  from safetensors.numpy import load_file, save_file
  hf_tiny.build("qwen3", tmp_path)
  f = tmp_path / "model.safetensors"
  state = load_file(str(f))
  state["model.layers.1.mlp.up_proj.weight"] = state["model.layers.1.mlp.up_proj.weight"][:-1]
  save_file(state, str(f), metadata={"format": "pt"})
  with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(95, 64\)"):
    load_model(tmp_path, tokenizer=False, use_cache=False)


def test_prompt_longer_than_cache_is_clear_error(pair):
  kind, hf, lm = pair
  cache = lm.init_cache(1, 4)
  with pytest.raises(ValueError, match="do not fit in the cache"):
    lm.apply(lm.params, _tokens(1, 6), cache)


def test_cache_is_a_pytree():
  cache = KVCache.init(2, 1, 2, 8, 4)
  leaves = jax.tree.leaves(cache)
  assert len(leaves) == 4
  moved = jax.tree.map(lambda x: x + 1, cache)
  assert isinstance(moved, KVCache) and int(moved.end) == 1
  assert jnp.all(cache.valid_mask() == False)  # noqa: E712


def test_unscanned_layout_matches_scanned(pair):
  kind, hf, lm = pair
  flat = lm.with_layout(scan_layers=False, remat=True)
  assert "layers_0" in flat.params and "layers" not in flat.params
  ids = _tokens(2, 10, seed=6)
  a, ca = lm.apply(lm.params, ids, lm.init_cache(2, 12))
  b, cb = flat.apply(flat.params, ids, flat.init_cache(2, 12))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  np.testing.assert_allclose(np.asarray(ca.k), np.asarray(cb.k), atol=1e-5)
  back = flat.with_layout(scan_layers=True)
  jax.tree.map(np.testing.assert_array_equal, back.params, lm.params)
  loaded = load_model(lm.source, tokenizer=False, use_cache=False, scan_layers=False)
  assert not loaded.scan_layers
  jax.tree.map(np.testing.assert_array_equal, loaded.params, flat.params)
