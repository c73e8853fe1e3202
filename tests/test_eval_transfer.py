"""Evaluation systems for questions with a private document (synthetic_docs)."""

import dataclasses

import jax
import numpy as np
import pytest

from c2cjax.c2c import C2C, Fuser
from c2cjax.evaluation import answerers as ev
from c2cjax.evaluation.runner import Evaluator, Settings
from c2cjax.evaluation.systems import open_gates
from c2cjax.models.tiny import tiny_lm
from tests.test_eval_runner import PROMPTS, QUESTIONS, char_tokenizer

SETTINGS = Settings(batch_size=2, buckets=(96,), warmup=False, progress=False,
                       prompts=PROMPTS)
DOCS = ("Document:\nThe arm bone is the humerus.\n\n", "Document:\nThe red one is Mars.\n\n")


@pytest.fixture(scope="module")
def setup():
  rtok, stok = char_tokenizer(), char_tokenizer(reverse=True, chat=False)
  r, s = tiny_lm("qwen3", rtok, seed=0), tiny_lm("gemma3", stok, seed=1)
  fuser = Fuser.init(r, s, jax.random.PRNGKey(3), hidden_dim=32, intermediate_dim=48)
  qs = [dataclasses.replace(q, context=d) for q, d in zip((QUESTIONS[0], QUESTIONS[4]), DOCS)]
  bare = [dataclasses.replace(q, context="") for q in qs]
  return r, s, fuser, qs, bare


def _scores(system, questions):
  preds = Evaluator(SETTINGS).evaluate(system, questions, ("logits",))
  return np.array([p.scores for p in preds])


def test_document_reaches_only_the_systems_that_read_it(setup):
  r, s, fuser, qs, bare = setup
  receiver = _scores(ev.System("receiver", ev.Solo(r)), qs)
  np.testing.assert_array_equal(receiver, _scores(ev.System("receiver", ev.Solo(r)), bare))
  doc = _scores(ev.System("receiver_doc", ev.Solo(r), document="prompt"), qs)
  assert np.abs(doc - receiver).max() > 1e-4
  oracle = ev.System("oracle", ev.Enriched(r), document="sharer")
  np.testing.assert_allclose(_scores(oracle, bare), receiver, atol=1e-5)  # no document
  assert np.abs(_scores(oracle, qs) - receiver).max() > 1e-4
  closed = ev.System("c2c", ev.Fused(C2C(r, [s], [open_gates(fuser, -1.0)])),
                     document="sharer")
  np.testing.assert_allclose(_scores(closed, qs), receiver, atol=1e-5)
  opened = ev.System("c2c", ev.Fused(C2C(r, [s], [open_gates(fuser)])), document="sharer")
  with_doc, without = _scores(opened, qs), _scores(opened, bare)
  assert np.abs(with_doc - without).max() > 1e-4  # the sharer read the document


def test_pad_left_widens_sharer_rows_with_a_context():
  rows = [(np.arange(3), (np.arange(10),)), (np.arange(5), (np.arange(5),))]
  tokens, mask, (sharer,) = ev.pad_left(rows, 8, 2, buckets=(4, 8))
  assert tokens.shape == (2, 8) and sharer.shape == (2, 8 + 8)
  np.testing.assert_array_equal(sharer[0, -10:], np.arange(10))
  assert (sharer[0, :-10] == -1).all() and (sharer[1, :-5] == -1).all()
  ids, masks = ev.sharer_ids_and_masks(tokens, (sharer,), [7])
  assert (ids[0][masks[0] == 0] == 7).all() and masks[0].sum() == 15


def _cloze(system, questions, prompts):
  settings = dataclasses.replace(SETTINGS, prompts=prompts, continuation_buckets=(32,))
  preds = Evaluator(settings).evaluate(system, questions, ("cloze",))
  return np.array([p.scores for p in preds if p.method == "cloze"])


REPLY = dataclasses.replace(PROMPTS, cloze="Q: {question}\n", reply_prefix="The answer is:")


def test_reply_prefix_is_read_unfused_by_c2c(setup):
  """C2C fuses the prompt before the reply prefix; the receiver reads the prefix alone on
  the fused cache, as the training's pass 2 reads a reply (reference: fuse the head, rerun
  the whole row keeping the fused slots)."""
  from c2cjax.c2c import core
  from c2cjax.evaluation.runner import reply_tokens
  from c2cjax.models import lm as lm_lib
  r, s, fuser, qs, _ = setup
  receiver = _cloze(ev.System("receiver", ev.Solo(r)), qs, REPLY)
  closed = ev.Fused(C2C(r, [s], [open_gates(fuser, -1.0)]))
  np.testing.assert_allclose(_cloze(ev.System("c2c", closed, document="sharer"), qs, REPLY),
                             receiver, atol=1e-5)
  opened = ev.Fused(C2C(r, [s], [open_gates(fuser)]))
  unfused = _cloze(ev.System("c2c", opened, document="sharer"), qs, REPLY)
  fused = _cloze(ev.System("c2c", ev.Fused(opened.c2c, fuse_reply=True), document="sharer"),
                 qs, REPLY)
  assert np.abs(unfused - fused).max() > 1e-4 and np.abs(unfused - receiver).max() > 1e-4

  q = qs[0]
  ctx = REPLY.cloze.format(question=q.question) + REPLY.reply_prefix
  enc = opened.encode(ctx, True, q.context)
  n = reply_tokens(opened.tokenizer, ctx, enc[0], REPLY.reply_prefix)
  assert n == len(REPLY.reply_prefix)  # a character tokenizer
  tokens, mask, sharer = ev.pad_left([enc], len(enc[0]), 1, (len(enc[0]),))
  logits, _ = opened.prefill(tokens, mask, sharer, max_len=len(enc[0]), reply=n)
  ids, masks = ev.sharer_ids_and_masks(tokens, sharer, opened.pads)
  c2c = opened.c2c
  p = tokens.shape[1]
  head = (np.arange(p) < p - n - 1)[None]  # fused: the prompt before the prefix, but its last
  cache = core.fused_cache(c2c.spec, c2c.params, tokens, mask, ids, head, (0,),
                           sharer_masks=masks)
  ref, _ = lm_lib.forward(r.module, r.params, tokens, cache.replace(end=0), keep=head)
  np.testing.assert_allclose(np.asarray(logits[0]), np.asarray(ref[0, -1]), atol=1e-4)


def test_reply_tokens_and_checkpoint_prompt_options(tmp_path):
  import json
  from c2cjax.defaults import eval_config
  from c2cjax.evaluation.runner import reply_tokens
  from c2cjax.evaluation.systems import prompt_options
  tok = char_tokenizer()
  ids = tok("Q: x\nThe answer is:")["input_ids"]
  assert reply_tokens(tok, "Q: x\nThe answer is:", ids, "The answer is:") == 14
  assert reply_tokens(tok, "Q: x\n", ids, "") == 0
  with pytest.raises(ValueError, match="does not end with reply_prefix"):
    reply_tokens(tok, "Q: x\n", ids, "The answer is:")
  meta = tmp_path / "fuser" / "fuser" / "metadata"
  meta.parent.mkdir(parents=True)
  meta.write_text(json.dumps({"meta": {"fuse_last": True, "reply_prefix": "The answer is:"}}))
  c = eval_config()
  with pytest.raises(ValueError, match="trained with reply_prefix 'The answer is:'"):
    prompt_options(tmp_path / "fuser", c)
  c.prompts.reply_prefix = "The answer is:"
  assert prompt_options(tmp_path / "fuser", c) == {"fuse_last": True, "fuse_reply": True}
  meta.write_text(json.dumps({"meta": {}}))  # fusers from before these fields
  assert prompt_options(tmp_path / "fuser", c) == {"fuse_last": False, "fuse_reply": False}
