"""The release scheme on the model side: pads inside sequences (cache holes) and the
release's section-by-section fusion (c2cjax.release_prefill)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import hf_tiny

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module", params=hf_tiny.KINDS)
def pair(request, tmp_path_factory):
  return hf_tiny.loaded(request.param, tmp_path_factory)


def test_holes_match_transformers_attention_mask(pair):
  """Pads inside a sequence: masked keys, positions counted (HF with a 2-D mask with
  zeros inside and positions 0..T-1, as the released C2C runs its models)."""
  kind, hf, lm = pair
  ids = np.random.default_rng(0).integers(3, 128, size=(2, 20)).astype(np.int64)
  mask = np.ones((2, 20), np.int64)
  mask[0, 5:8] = 0
  mask[1, 12:14] = 0
  mask[1, 19] = 0  # the last position a pad, as the release's final section can be
  with torch.no_grad():
    ref = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
             position_ids=torch.arange(20)[None].repeat(2, 1)).logits.numpy()
  cache = lm.init_cache(2, 24, holes=True)
  logits, cache = lm.apply(lm.params, ids, cache, attention_mask=mask)
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
  assert np.asarray(cache.holes)[:, :20].tolist() == (mask == 0).tolist()
  # a decode step reads the holes from the cache
  nxt = np.array([[5], [7]], np.int64)
  with torch.no_grad():
    ref = hf(torch.from_numpy(np.concatenate([ids, nxt], 1)),
             attention_mask=torch.from_numpy(np.concatenate([mask, np.ones((2, 1), np.int64)], 1)),
             position_ids=torch.arange(21)[None].repeat(2, 1)).logits.numpy()[:, -1]
  step, _ = lm.apply(lm.params, nxt, cache)
  np.testing.assert_allclose(np.asarray(step[:, 0]), ref, atol=1e-4, rtol=0)


def test_fused_runs():
  from c2cjax.release_prefill import fused_runs  # pylint: disable=g-import-not-at-top
  runs, n = fused_runs(np.array([[0, 1, 1, 0, 1, 0], [1, 1, 0, 0, 0, 0]]))
  assert runs.tolist() == [[0, 1, 1, 0, 2, 0], [1, 1, 0, 0, 0, 0]] and n == 2
  assert fused_runs(np.zeros((1, 3)))[1] == 0


def _sectioned_reference(r, s, fuse_one, tokens, mask, stoks, smask, fuse_mask,
                         last_section=False):
  """The release's loop, literally: one run at a time, receiver and sharer prefilling it
  on their caches, a fused run fused right after; the last run the receiver's alone.
  Returns the last position's logits (or, with ``last_section``, the last run's logits
  and its start) and the receiver cache."""
  p = tokens.shape[1]
  f = fuse_mask[0].astype(bool)
  cuts = [0] + [t for t in range(1, p) if f[t] != f[t - 1]] + [p]
  rc, sc = r.init_cache(1, p, holes=True), s.init_cache(1, p, holes=True)
  for i, (a, e) in enumerate(zip(cuts[:-1], cuts[1:])):
    logits, rc = r.apply(r.params, tokens[:, a:e], rc, attention_mask=mask[:, a:e])
    if i == len(cuts) - 2:
      return ((logits, a) if last_section else logits[:, -1]), rc
    _, sc = s.apply(s.params, stoks[:, a:e], sc, attention_mask=smask[:, a:e])
    if f[a]:
      tm = np.zeros((1, p), bool)
      tm[0, a:e] = True
      rc = fuse_one(rc, sc, jnp.asarray(tm))


def test_release_prefill_equals_the_release_loop():
  from c2cjax import fuse as fuse_lib  # pylint: disable=g-import-not-at-top
  from c2cjax.c2c import Fuser  # pylint: disable=g-import-not-at-top
  from c2cjax.models.tiny import tiny_lm  # pylint: disable=g-import-not-at-top
  from c2cjax.release_prefill import fused_runs, release_prefill  # pylint: disable=g-import-not-at-top
  r, s = tiny_lm("qwen3", seed=0), tiny_lm("gemma3", seed=1)
  f = Fuser.init(r, s, jax.random.PRNGKey(3), "last_aligned_clamped", hidden_dim=32,
                 intermediate_dim=48)
  params = dict(f.params)
  for k in ("key_gate_logit", "value_gate_logit"):  # open gates: the fusion shows
    params[k] = jnp.full_like(params[k], 3.0)
  fuse_one = lambda rc, sc, tm: fuse_lib.fuse((params,), rc, (sc,), (f.layer_map,), tm,
                                              config=(f.config,))
  rng = np.random.default_rng(0)
  p = 22
  tokens = rng.integers(3, 128, size=(1, p)).astype(np.int32)
  stoks = rng.integers(3, 128, size=(1, p)).astype(np.int32)
  # template / message / template (receiver pads) / message / template (sharer pads, and a
  # receiver pad at the very end)
  fuse_mask = np.array([[0] * 4 + [1] * 5 + [0] * 4 + [1] * 4 + [0] * 5])
  mask, smask = np.ones((1, p), np.int32), np.ones((1, p), np.int32)
  mask[0, 11:13] = 0
  mask[0, -1] = 0
  smask[0, 18:21] = 0
  want_logits, want = _sectioned_reference(r, s, fuse_one, tokens, mask, stoks, smask, fuse_mask)
  runs, n = fused_runs(fuse_mask)
  assert n == 2
  sc = s.module_prefill(s.params, jnp.asarray(stoks), s.init_cache(1, p, holes=True),
                        jnp.asarray(smask))
  logits, got = release_prefill(r.module, r.params, jnp.asarray(tokens), jnp.asarray(mask),
                                (sc,),
                                lambda rc, scs, tm: fuse_one(rc, scs[0], tm), jnp.asarray(runs),
                                n, p + 4)
  np.testing.assert_allclose(np.asarray(logits[:, -1]), np.asarray(want_logits), atol=1e-4)
  np.testing.assert_allclose(np.asarray(got.k[:, :, :, :p]), np.asarray(want.k), atol=1e-4)
  np.testing.assert_allclose(np.asarray(got.v[:, :, :, :p]), np.asarray(want.v), atol=1e-4)
  assert np.asarray(got.holes)[0, :p].tolist() == (mask[0] == 0).tolist()
  # One pass only (fusing all message runs at once) is not the release's result.
  _, once = release_prefill(r.module, r.params, jnp.asarray(tokens), jnp.asarray(mask), (sc,),
                            lambda rc, scs, tm: fuse_one(rc, scs[0], tm),
                            jnp.asarray((runs > 0).astype(np.int32)), 1, p + 4)
  assert np.abs(np.asarray(once.k[:, :, :, 13:17]) - np.asarray(want.k[:, :, :, 13:17])).max() > 1e-3


def test_c2c_generate_with_the_release_scheme():
  """Chat prompts (a string, a multi-turn list) through C2C with alignment="release": the
  first token is the release loop's argmax and the prefill logits are the loop's, with
  left padding beside the pads inside the prompt."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from c2cjax import fuse as fuse_lib, sections  # pylint: disable=g-import-not-at-top
  from c2cjax.c2c import C2C, Fuser  # pylint: disable=g-import-not-at-top
  from c2cjax.models.tiny import tiny_lm  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).parent / "fixtures" / "rosetta"))
  import tiny_tokenizers  # pylint: disable=g-import-not-at-top
  rt, st = tiny_tokenizers.load("qwen3"), tiny_tokenizers.load("llama3")
  r, s = tiny_lm("qwen3", rt, seed=0), tiny_lm("llama3", st, seed=1)
  f = Fuser.init(r, s, jax.random.PRNGKey(2), "last_aligned_clamped", hidden_dim=32,
                 intermediate_dim=48)
  params = dict(f.params)
  for k in ("key_gate_logit", "value_gate_logit"):
    params[k] = jnp.full_like(params[k], 3.0)
  f = Fuser(params, f.config, f.layer_map)
  c2c = C2C(r, [s], [f], alignment="release")
  assert isinstance(c2c.aligners[0], sections.ReleaseAligner)
  multi = [{"role": "system", "content": "Be brief."},
           {"role": "user", "content": "What is 2+2?"},
           {"role": "assistant", "content": "It is 4."},
           {"role": "user", "content": "And times 3?"}]
  prompts = ["What is the capital of France?", multi]
  out, lengths = c2c.generate(prompts, max_new_tokens=4, return_tokens=True, eos_ids=())
  ex = c2c.aligners[0].prompt([{"role": "user", "content": prompts[0]}])
  fuse_one = lambda rc, sc, tm: fuse_lib.fuse((f.params,), rc, (sc,), (f.layer_map,), tm,
                                              config=(f.config,))
  logits, _ = _sectioned_reference(
      r, s, fuse_one, ex["receiver_ids"][None], ex["attention_mask"][None],
      ex["sharer_ids"][None], ex["sharer_attention_mask"][None], ex["fuse_mask"][None])
  assert int(out[0, 0]) == int(np.argmax(np.asarray(logits[0])))
  batch = c2c.encode_batch(prompts[:1])
  first, _ = c2c.prefill(batch["receiver_ids"], batch["attention_mask"], batch["sharer_ids"],
                         sharer_masks=batch["sharer_attention_mask"],
                         fuse_mask=batch["fuse_mask"])
  np.testing.assert_allclose(np.asarray(first[0]), np.asarray(logits[0]), atol=1e-4)
  with pytest.raises(ValueError, match="offsets scheme"):
    c2c.generate(prompts, max_new_tokens=2, fuse_last=True)
  assert C2C(r, [s], [f], alignment="longest").alignment == "offsets"  # the old meaning


def test_c2c_nll_with_the_release_scheme():
  """Training loss on a multi-turn release example (three fused runs) equals the loss of
  the release loop's last section (where every loss position lies)."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from c2cjax import fuse as fuse_lib, sections, train  # pylint: disable=g-import-not-at-top
  from c2cjax.c2c import C2C, Fuser  # pylint: disable=g-import-not-at-top
  from c2cjax.data import chat, pipeline  # pylint: disable=g-import-not-at-top
  from c2cjax.models.tiny import tiny_lm  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).parent / "fixtures" / "rosetta"))
  import tiny_tokenizers  # pylint: disable=g-import-not-at-top
  rt, st = tiny_tokenizers.load("llama3"), tiny_tokenizers.load("qwen3")
  r, s = tiny_lm("llama3", rt, seed=3), tiny_lm("qwen2", st, seed=4)
  f = Fuser.init(r, s, jax.random.PRNGKey(5), "last_aligned_clamped", hidden_dim=32,
                 intermediate_dim=48)
  params = dict(f.params)
  for k in ("key_gate_logit", "value_gate_logit"):
    params[k] = jnp.full_like(params[k], 3.0)
  c2c = C2C(r, [s], [Fuser(params, f.config, f.layer_map)], alignment="release")
  enc = chat.ChatEncoder(rt, 512, c2c.aligners, alignment="release")
  msgs = [{"role": "user", "content": "What is 2+2?"},
          {"role": "assistant", "content": "It is 4."},
          {"role": "user", "content": "And times 3?"},
          {"role": "assistant", "content": "It is 12."}]
  ex = enc(msgs)
  batch = {k: jnp.asarray(v) for k, v in pipeline.pad_examples(
      [ex], length=len(ex["receiver_ids"]), pad_ids=enc.pad_ids).items()}
  total, count = train.c2c_nll(c2c, (params,), r.params, (s.params,), batch, train=False)
  fuse_one = lambda rc, sc, tm: fuse_lib.fuse((params,), rc, (sc,), (f.layer_map,), tm,
                                              config=(f.config,))
  (logits, a), _ = _sectioned_reference(
      r, s, fuse_one, ex["receiver_ids"][None], ex["attention_mask"][None],
      ex["sharer_ids"][0][None], ex["sharer_attention_mask"][0][None], ex["fuse_mask"][None],
      last_section=True)
  assert ex["loss_mask"][:a + 1].sum() == 0  # every target is predicted in the last run
  ref, n = train.token_nll(logits, jnp.asarray(ex["receiver_ids"][None, a:]),
                           jnp.asarray(ex["loss_mask"][None, a:]))
  assert float(count) == float(n) > 0
  np.testing.assert_allclose(float(total), float(ref), rtol=1e-4)


def test_evaluation_with_the_release_scheme():
  """The evaluator hands a release-scheme C2C messages: its letter scores are the logits
  of C2C.prefill on the release batch of the MCQ messages; cloze (plain text) is refused."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from c2cjax.evaluation import answerers, runner, systems  # pylint: disable=g-import-not-at-top
  from c2cjax.c2c import C2C, Fuser  # pylint: disable=g-import-not-at-top
  from c2cjax.evaluation import prompts  # pylint: disable=g-import-not-at-top
  from c2cjax.evaluation.datasets import Question  # pylint: disable=g-import-not-at-top
  from c2cjax.models.tiny import tiny_lm  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(pathlib.Path(__file__).parent / "fixtures" / "rosetta"))
  import tiny_tokenizers  # pylint: disable=g-import-not-at-top
  rt, st = tiny_tokenizers.load("qwen3"), tiny_tokenizers.load("llama3")
  r, s = tiny_lm("qwen3", rt, seed=0), tiny_lm("llama3", st, seed=1)
  f = systems.open_gates(Fuser.init(r, s, jax.random.PRNGKey(2), "last_aligned_clamped",
                               hidden_dim=32, intermediate_dim=48))
  c2c = C2C(r, [s], [f], alignment="release")
  qs = [Question("t/0", "t", "t", "t", "What is 2+2?", ("3", "4", "5", "22"), 1),
        Question("t/1", "t", "t", "t", "Which planet is the largest?", ("Mars", "Jupiter"), 1)]
  settings = runner.Settings(batch_size=2, buckets=(128,), max_new_tokens=3, warmup=False,
                         progress=False)
  evaluator = runner.Evaluator(settings)
  system = answerers.System("c2c", answerers.Fused(c2c))
  preds = evaluator.evaluate(system, qs, ("logits", "generate"))
  assert len(preds) == 4
  batch = c2c.encode_batch([prompts.mcq_messages(q) for q in qs], multiple_of=128)
  logits, _ = c2c.prefill(batch["receiver_ids"], batch["attention_mask"], batch["sharer_ids"],
                          sharer_masks=batch["sharer_attention_mask"],
                          fuse_mask=batch["fuse_mask"])
  ids = answerers.letter_token_ids(rt, 4)
  for row, q in enumerate(qs):
    p = next(p for p in preds if p.question_id == q.id and p.method == "logits")
    want = [max(float(logits[row, t]) for t in ids[k]) for k in range(len(q.choices))]
    np.testing.assert_allclose(p.scores, want, atol=1e-4)
  with pytest.raises(ValueError, match="aligns chat messages"):
    evaluator.evaluate(system, qs, ("cloze",))
