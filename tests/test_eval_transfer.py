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
