"""The synthetic private-document task: deterministic, disjoint splits, correct answers."""

import numpy as np
import pytest

from c2cjax.data import chat, synthetic
from c2cjax.evaluation import datasets

SMALL = synthetic.TaskConfig(seed=3, train_docs=150, heldout_docs=60, pool_size=60)


def _words(docs):
  """Every invented word: first names, surnames, towns and companies."""
  out = set()
  for d in docs:
    for e in d.entities:
      out.update(e.name.split())
      out.update(v for a, v in e.facts if a in ("town", "company"))
  return out


def test_deterministic_and_seeded():
  a = synthetic.generate_split("heldout", SMALL)
  synthetic.name_pools.cache_clear()
  assert synthetic.generate_split("heldout", SMALL) == a
  other = synthetic.generate_split("heldout", synthetic.TaskConfig(seed=4, train_docs=150,
                                                                   heldout_docs=60, pool_size=60))
  assert [d.text for d in other] != [d.text for d in a]


def test_splits_share_no_entity_or_name():
  pools = synthetic.name_pools(SMALL)
  for kind in ("first", "last", "town", "company"):
    train, held = set(getattr(pools["train"], kind)), set(getattr(pools["heldout"], kind))
    assert len(train) == len(held) == SMALL.pool_size and not train & held, kind
  train = synthetic.generate_split("train", SMALL)
  held = synthetic.generate_split("heldout", SMALL)
  assert not _words(train) & _words(held)
  names = [e.name for d in train + held for e in d.entities]
  assert len(names) == len(set(names)) == 3 * (150 + 60)  # every entity once


def test_answers_are_in_the_document_and_in_the_options_once():
  for distractors in ("absent", "present"):
    cfg = synthetic.TaskConfig(seed=1, train_docs=0, heldout_docs=80, pool_size=40,
                               distractors=distractors)
    n = 0
    for doc, qa in synthetic.questions("heldout", cfg):
      n += 1
      facts = {e.name: dict(e.facts) for e in doc.entities}
      assert facts[qa.entity][qa.attribute] == qa.answer_text
      statement = synthetic.ATTRIBUTES[qa.attribute][0].format(name=qa.entity,
                                                               value=qa.answer_text)
      assert statement in doc.text
      assert len(qa.choices) == 4 and len(set(qa.choices)) == 4
      assert qa.choices.count(qa.answer_text) == 1
      assert qa.choices[qa.answer] == qa.answer_text
      in_doc = {v for e in doc.entities for a, v in e.facts if a == qa.attribute}
      wrong = [c for c in qa.choices if c != qa.answer_text]
      if distractors == "absent":
        assert not set(wrong) & in_doc  # only the answer can be read off the document
      else:
        assert len(set(wrong) & in_doc) == min(3, len(in_doc) - 1)
    assert n == 80 * cfg.questions_per_doc
  letters = [qa.answer for _, qa in synthetic.questions("train", synthetic.TaskConfig(
      train_docs=400, heldout_docs=0))]
  assert all(abs(letters.count(k) / len(letters) - 0.25) < 0.05 for k in range(4))


def test_chat_records_and_benchmark():
  recs = synthetic.records("heldout", SMALL)
  assert len(recs) == 2 * 60 * SMALL.questions_per_doc
  mc, short = recs[0], recs[1]
  assert mc["sharer_context"] == short["sharer_context"]
  assert mc["sharer_context"].startswith("Document:\n")
  user, reply = chat.to_messages(mc)
  value = chat.to_messages(short)[-1]["content"].removeprefix(synthetic.SHORT_PREFIX + " ")
  assert user["content"].count(f"\n{reply['content']}. {value}\n") == 1
  assert chat.to_messages(short)[0]["content"] in user["content"]
  assert chat.to_messages(short)[-1]["content"] == f"{synthetic.SHORT_PREFIX} {value}"
  qs = datasets.load_benchmark("synthetic_docs", limit=40, seed=2)
  assert len(qs) == 40 and all(q.context.startswith("Document:\n") for q in qs)
  assert all(q.choices[q.answer] in q.context for q in qs)
  assert [q.subject for q in qs] == sorted(q.subject for q in qs)
  with pytest.raises(ValueError, match="unknown synthetic_docs subjects"):
    datasets.load_benchmark("synthetic_docs", subjects=["height"])


def test_bad_config_is_a_clear_error():
  with pytest.raises(ValueError, match="distractors"):
    synthetic.TaskConfig(distractors="some")
  with pytest.raises(ValueError, match="split"):
    synthetic.generate_split("test", SMALL)
  with pytest.raises(ValueError, match="pool_size"):
    synthetic.generate_split("train", synthetic.TaskConfig(train_docs=5000, pool_size=20))


def test_registered_as_a_training_source(tmp_path):
  from c2cjax.data import sources
  assert "synthetic_docs/all" in sources.SOURCES
  src = sources.load_source("synthetic_docs/mc", data_dir=tmp_path, split="heldout")
  first = synthetic.records("heldout", forms=("mc",))[0]
  assert len(src) == synthetic.TaskConfig().heldout_docs * synthetic.TaskConfig().questions_per_doc
  assert src[0]["sharer_context"].decode() == first["sharer_context"]
  assert chat.to_messages(src[0]) == first["messages"]


def test_reply_prefix_is_fused_with_the_prompt_and_not_a_target():
  from tests.test_eval_runner import char_tokenizer
  tok = char_tokenizer()
  (rec,) = synthetic.records("train", forms=("short",))[:1]
  value = chat.to_messages(rec)[-1]["content"].removeprefix(synthetic.SHORT_PREFIX)
  plain = chat.ChatEncoder(tok, 512)(chat.to_messages(rec))
  for fuse_last in (False, True):
    ex = chat.ChatEncoder(tok, 512, fuse_last=fuse_last,
                          reply_prefix=synthetic.SHORT_PREFIX)(chat.to_messages(rec))
    np.testing.assert_array_equal(ex["receiver_ids"], plain["receiver_ids"])
    first = int(np.argmax(plain["loss_mask"]))  # the reply's first token
    n = len(synthetic.SHORT_PREFIX)  # characters are tokens
    assert ex["loss_mask"][:first + n].sum() == 0 and ex["loss_mask"][first + n:].all()
    assert ex["loss_mask"].sum() == len(value) + 2  # " value", <|im_end|>, "\n"
    assert ex["fuse_mask"][:first + n - 1].all() and not ex["fuse_mask"][first + n:].any()
    assert ex["fuse_mask"][first + n - 1] == fuse_last  # ":"
  with pytest.raises(ValueError, match="does not open with it"):
    chat.ChatEncoder(tok, 512, reply_prefix="Sure:")(chat.to_messages(rec))
