"""A sharer-only context: layout, training batches and loss (the receiver never reads it)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c2cjax import fuse as fuse_lib, sharer_context
from c2cjax.c2c import C2C
from c2cjax.models.tiny import tiny_lm
from c2cjax import offline
from tests.test_train import tiny_cfg


@pytest.fixture(scope="module")
def sharer():
  return tiny_lm("gemma3", seed=1)


def test_prefill_slice_equals_unpadded_context_then_sequence(sharer):
  """Training layout: left-padded contexts of different lengths, right-padded sequences."""
  rng = np.random.default_rng(0)
  c, s, lens, ctx_lens = 10, 8, (8, 5), (7, 3)
  ctx = np.zeros((2, c), np.int32)
  ctx_mask = np.zeros_like(ctx)
  seq = np.zeros((2, s), np.int32)
  mask = np.zeros_like(seq)
  rows = []
  for b in range(2):
    x, y = rng.integers(3, 128, ctx_lens[b]), rng.integers(3, 128, lens[b])
    ctx[b, c - len(x):], ctx_mask[b, c - len(x):] = x, 1
    seq[b, :len(y)], mask[b, :len(y)] = y, 1
    rows.append(np.concatenate([x, y]))
  ids, full_mask = sharer_context.join(*map(jnp.asarray, (ctx, ctx_mask, seq, mask)))
  assert ids.shape == (2, c + s)
  cut = sharer_context.prefill_slice(sharer.module, sharer.params, ids, full_mask, s)
  assert cut.k.shape[3] == s and int(cut.end) == s
  for b in range(2):  # the slow reference: one unpadded sequence, context then sequence
    _, ref = sharer.apply(sharer.params, rows[b][None], sharer.init_cache(1, len(rows[b])))
    n = lens[b]
    np.testing.assert_allclose(np.asarray(cut.k[:, b, :, :n]),
                               np.asarray(ref.k[:, 0, :, -n:]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(cut.v[:, b, :, :n]),
                               np.asarray(ref.v[:, 0, :, -n:]), atol=1e-5)
  with pytest.raises(ValueError, match="cannot hold"):
    sharer_context.prefill_slice(sharer.module, sharer.params, ids[:, :4], full_mask[:, :4], s)


def _set_gates(params, value):
  return {**params, "key_gate_logit": jnp.full_like(params["key_gate_logit"], value),
          "value_gate_logit": jnp.full_like(params["value_gate_logit"], value)}


def test_training_batches_read_the_document_only_through_the_sharer(tmp_path):
  try:  # the tiny models use the offline packages' tokenizers
    offline.smollm2_gguf(), offline.gemma3_gguf()
  except offline.MissingOfflinePackage as e:
    pytest.skip(str(e))
  from c2cjax.train import build_c2c, build_data, c2c_nll, receiver_nll
  from c2cjax.train_step import pass2_split
  cfg = tiny_cfg()
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.data.source, cfg.data.heldout_split = "synthetic_docs/mc", "heldout"
  cfg.data.context_len, cfg.data.max_len = 128, 96
  c2c = build_c2c(cfg, jax.random.PRNGKey(0))
  ds, n = build_data(cfg, c2c, 2, heldout=True, seed=0)
  assert n == 600  # the held-out split: 200 documents x 3 questions
  batch = jax.tree.map(jnp.asarray, next(iter(ds)))
  assert batch["sharer_context_ids"][0].shape == (2, 128)
  assert batch["receiver_ids"].shape[1] <= 96
  gemma = c2c.sharers[0].tokenizer
  doc = gemma.decode(np.asarray(batch["sharer_context_ids"][0][0])[
      np.asarray(batch["sharer_context_mask"][0][0]) == 1])
  assert "Document:" in doc
  receiver_text = c2c.receiver.tokenizer.decode(np.asarray(batch["receiver_ids"][0]))
  assert "Document:" not in receiver_text  # the receiver's tokens hold the question only

  rp, sp, f = c2c.receiver.params, (c2c.sharers[0].params,), c2c.fusers[0].params
  # Another context: none at all (the first rows of the held-out split share a document).
  empty = lambda xs: tuple(jnp.zeros_like(x) for x in xs)
  other = dict(batch, sharer_context_mask=empty(batch["sharer_context_mask"]))
  loss = lambda fp, b: [float(x) for x in c2c_nll(c2c, (fp,), rp, sp, b, train=False)]
  closed, alone = loss(_set_gates(f, -1.0), batch), receiver_nll(c2c, rp, batch)
  np.testing.assert_allclose(closed[0], float(alone[0]), rtol=1e-6)
  assert loss(_set_gates(f, -1.0), other) == closed  # closed gates: the document is unseen
  # A random tiny model over a 49k vocabulary is nearly uniform, so the fused cache moves
  # the loss only slightly: the checks are exact (a no-op fusion is bit-identical).
  opened = loss(_set_gates(f, 1.0), batch)
  assert opened[1] == closed[1] and opened[0] != closed[0]
  assert loss(_set_gates(f, 1.0), other)[0] != opened[0]  # it reads the document
  # The pass-2 split (pass 1 on the fused prefix only) cuts the context rows at C + fused_end.
  split = pass2_split(jax.tree.map(np.asarray, batch), 4)
  assert split != (0, batch["receiver_ids"].shape[1])  # the split path is taken
  np.testing.assert_allclose([float(x) for x in c2c_nll(
      c2c, (_set_gates(f, 1.0),), rp, sp, batch, train=False, split=split)], opened,
      rtol=1e-5)
  # Without context fields the same batch is ordinary C2C (the sharer reads the question only).
  plain = {k: v for k, v in batch.items() if not k.startswith("sharer_context")}
  assert loss(_set_gates(f, 1.0), plain)[0] != opened[0]


# --- C2C generation with a sharer-only context --------------------------------------------
def _gen_batch(seed=0):
  """Left-padded prompts [2, 10] and per row a context, in the generation layout."""
  rng = np.random.default_rng(seed)
  p, lens, ctx_lens = 10, (10, 6), (9, 4)
  tokens, mask = np.zeros((2, p), np.int32), np.zeros((2, p), np.int32)
  sids, smask = np.zeros((2, 16 + p), np.int32), np.zeros((2, 16 + p), np.int32)
  rows = []
  for b in range(2):
    prompt, ctx = rng.integers(3, 128, lens[b]), rng.integers(3, 128, ctx_lens[b])
    shared = rng.integers(3, 128, lens[b])  # the sharer's ids aligned to the prompt
    tokens[b, p - lens[b]:], mask[b, p - lens[b]:] = prompt, 1
    row = np.concatenate([ctx, shared])
    sids[b, -len(row):], smask[b, -len(row):] = row, 1
    rows.append((prompt, row))
  return tokens, mask, sids, smask, rows


def test_c2c_sharer_context_closed_gates_is_the_receiver_alone(sharer):
  from tests.test_c2c import small_fuser
  r = tiny_lm("qwen3", seed=0)
  c2c = C2C(r, [sharer], [small_fuser(r, sharer, 0, gate=-1.0)])
  tokens, mask, sids, smask, _ = _gen_batch()
  out, _, _ = c2c.generate_ids(tokens, mask, (sids,), max_new_tokens=5, eos_ids=(),
                               sharer_masks=(smask,))
  alone, _, _ = c2c.generate_ids(tokens, mask, (sids[:, -10:],), max_new_tokens=5, eos_ids=(),
                                 sharers=[])  # the receiver alone, same program
  np.testing.assert_array_equal(out, alone)
  _, cache = c2c.prefill(tokens, mask, (sids,), sharer_masks=(smask,))
  _, alone_cache = c2c.prefill(tokens, mask, (sids[:, -10:],), sharers=[])
  np.testing.assert_array_equal(np.asarray(cache.k), np.asarray(alone_cache.k))


def test_c2c_sharer_context_equals_slow_reference(sharer):
  """Open gates: per row, prefill context + prompt unpadded, slice, fuse, last token."""
  from tests.test_c2c import small_fuser
  r = tiny_lm("qwen3", seed=0)
  f = small_fuser(r, sharer, 1, gate=3.0)
  c2c = C2C(r, [sharer], [f])
  tokens, mask, sids, smask, rows = _gen_batch(1)
  logits, cache = c2c.prefill(tokens, mask, (sids,), max_len=14, sharer_masks=(smask,))
  assert cache.k.shape[3] == 14 and int(cache.end) == 10  # the receiver's cache: P slots
  plain, plain_cache = c2c.prefill(tokens, mask, (sids[:, -10:],), max_len=14)
  assert np.abs(np.asarray(plain) - np.asarray(logits)).max() > 1e-4  # the context matters
  for b, (prompt, row) in enumerate(rows):
    n = len(prompt)
    _, rc = r.apply(r.params, prompt[None, :-1], r.init_cache(1, n - 1))
    _, sc = sharer.apply(sharer.params, row[None, :-1], sharer.init_cache(1, len(row) - 1))
    sc = sc.replace(k=sc.k[:, :, :, -(n - 1):], v=sc.v[:, :, :, -(n - 1):])
    fused = fuse_lib.fuse((f.params,), rc, (sc,), (f.layer_map,), jnp.ones((1, n - 1), bool),
                          config=(f.config,))
    ref, ref_cache = r.apply(r.params, prompt[None, -1:], fused.pad_to(n))
    np.testing.assert_allclose(np.asarray(logits[b]), np.asarray(ref[0, -1]), atol=2e-4)
    np.testing.assert_allclose(np.asarray(cache.k[:, b, :, 10 - n:10]),
                               np.asarray(ref_cache.k[:, 0, :, :n]), atol=2e-4)
  # The context never enters the receiver's cache: outside the fused slots (row 1's left
  # padding, the free slots) it is the receiver-alone cache, whatever the context.
  _, alone = c2c.prefill(tokens, mask, (sids[:, -10:],), max_len=14, sharers=[])
  np.testing.assert_array_equal(np.asarray(cache.k[:, 1, :, :4]), np.asarray(alone.k[:, 1, :, :4]))
  np.testing.assert_array_equal(np.asarray(cache.k[:, :, :, 10:]), 0)
  assert np.abs(np.asarray(cache.k[:, 1, :, 4:9]) - np.asarray(alone.k[:, 1, :, 4:9])).max() > 1e-3
  with pytest.raises(ValueError, match="fuse_response with a sharer context"):
    c2c.generate_ids(tokens, mask, (sids,), max_new_tokens=2, sharer_masks=(smask,),
                     fuse_response=True)
  with pytest.raises(ValueError, match="mask"):
    c2c.prefill(tokens, mask, (sids,), sharer_masks=(smask[:, 1:],))
