"""C2C generation with a release-format fuser on the offline pair, against the released code.

The fixture (``tests/fixtures/rosetta/generation``, made by ``make_generation_fixture.py``
with the original code): a seeded fuser in the release format (SmolLM2-135M-Instruct
receiver <- Gemma-3-270M sharer), the inputs its evaluator builds for four chats, its
greedy tokens and first-token logits.
"""

import json
import pathlib

import numpy as np
import pytest

from c2cjax import load_model, offline
from c2cjax.c2c import C2C, Fuser

pytestmark = pytest.mark.realweights
FIX = pathlib.Path(__file__).parent / "fixtures" / "rosetta" / "generation"


@pytest.fixture(scope="module")
def fixture():
  meta = json.loads((FIX / "generation.json").read_text())
  return meta, dict(np.load(FIX / "generation.npz"))


@pytest.fixture(scope="module")
def pair():
  try:
    return load_model(offline.smollm2_gguf()), load_model(offline.gemma3_gguf())
  except offline.MissingOfflinePackage as e:
    pytest.skip(str(e))


@pytest.fixture(scope="module")
def c2c(pair):
  fuser = Fuser.from_rosetta(FIX / "fuser")
  return C2C(pair[0], [pair[1]], [fuser])


def _rel(a, b):
  return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


def _fuse_mask(meta, i, n):
  """The fused slots: the sections the evaluator marks [1, 0] in kv_cache_index."""
  out, t = np.zeros(n, np.int32), 0
  for length, fused in zip(meta["chats"][i]["sections"], meta["chats"][i]["fused_sections"]):
    out[t:t + length] = fused
    t += length
  return out


def _batch(meta, arrays, rows, width):
  """The fixture's inputs of ``rows``, left-padded to ``width`` (an encode_batch batch)."""
  shape = (len(rows), width)
  b = {k: np.zeros(shape, np.int32) for k in ("receiver_ids", "attention_mask", "fuse_mask")}
  st, sm = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
  for j, i in enumerate(rows):
    ids = arrays[f"{i}/receiver_ids"]
    cols = slice(width - len(ids), width)
    b["receiver_ids"][j, cols], b["attention_mask"][j, cols] = ids, arrays[f"{i}/receiver_mask"]
    b["fuse_mask"][j, cols] = _fuse_mask(meta, i, len(ids))
    st[j, cols], sm[j, cols] = arrays[f"{i}/sharer_ids"], arrays[f"{i}/sharer_mask"]
  return {**b, "sharer_ids": (st,), "sharer_attention_mask": (sm,)}


def test_fixture_models_are_ours(pair, fixture):
  """The HF folders the released code ran compute what c2cjax's GGUF models compute."""
  meta, arrays = fixture
  for name, lm in zip(("receiver", "sharer"), pair):
    ids = arrays[f"plain/{name}_ids"]
    logits, _ = lm.apply(lm.params, ids[None])
    last = np.asarray(logits[0, -1])
    top = arrays[f"plain/{name}_top_ids"]
    assert _rel(last[:meta["ref_ids"]], arrays[f"plain/{name}_logits_head"]) < 1e-3
    assert _rel(last[top], arrays[f"plain/{name}_top_logits"]) < 1e-3


def test_imported_fuser(c2c, fixture):
  meta, _ = fixture
  fuser = c2c.fusers[0]
  assert fuser.alignment == "release" and c2c.alignment == "release"
  want = {int(t): s[0] for t, s in meta["layer_map"].items()}
  assert dict(fuser.layer_map.pairs()) == want and len(want) == 30
  assert fuser.config.hidden_dim == meta["hidden_dim"]


def test_inputs_match_the_release_evaluator(c2c, fixture):
  """encode_batch builds the inputs the released evaluator builds for these chats."""
  meta, arrays = fixture
  for i, chat in enumerate(meta["chats"]):
    b = c2c.encode_batch([chat["messages"]])
    n = len(arrays[f"{i}/receiver_ids"])
    cols = slice(b["receiver_ids"].shape[1] - n, None)
    assert b["attention_mask"][0, :-n].sum() == 0
    np.testing.assert_array_equal(b["receiver_ids"][0, cols], arrays[f"{i}/receiver_ids"])
    np.testing.assert_array_equal(b["attention_mask"][0, cols], arrays[f"{i}/receiver_mask"])
    np.testing.assert_array_equal(b["sharer_ids"][0][0, cols], arrays[f"{i}/sharer_ids"])
    np.testing.assert_array_equal(b["sharer_attention_mask"][0][0, cols],
                                  arrays[f"{i}/sharer_mask"])
    np.testing.assert_array_equal(b["fuse_mask"][0, cols], _fuse_mask(meta, i, n))


def test_greedy_tokens_and_first_logits_match(c2c, fixture):
  """All four chats in one left-padded batch: the released code's tokens and logits."""
  meta, arrays = fixture
  rows = list(range(len(meta["chats"])))
  width = max(len(arrays[f"{i}/receiver_ids"]) for i in rows) + 3  # every row left-padded
  batch = _batch(meta, arrays, rows, width)
  logits, _ = c2c.prefill(batch["receiver_ids"], batch["attention_mask"], batch["sharer_ids"],
                          sharer_masks=batch["sharer_attention_mask"],
                          fuse_mask=batch["fuse_mask"])
  logits = np.asarray(logits)
  out, lengths, _ = c2c.generate_ids(
      batch["receiver_ids"], batch["attention_mask"], batch["sharer_ids"],
      sharer_masks=batch["sharer_attention_mask"], fuse_mask=batch["fuse_mask"],
      max_new_tokens=meta["generation_config"]["max_new_tokens"])
  for j, i in enumerate(rows):
    ref = arrays[f"{i}/first_logits"]
    assert _rel(logits[j], ref) < 1e-3, i
    np.testing.assert_array_equal(out[j, :lengths[j]], arrays[f"{i}/tokens"], err_msg=str(i))
    # The fusion matters: the receiver alone answers otherwise.
    assert not np.array_equal(arrays[f"{i}/tokens"], arrays[f"{i}/alone_tokens"])


def test_generate_from_messages(c2c, fixture):
  """The public path: chat messages in, the released code's greedy answer out."""
  meta, arrays = fixture
  chats = [c["messages"] for c in meta["chats"]]
  out, lengths = c2c.generate(chats, max_new_tokens=meta["generation_config"]["max_new_tokens"],
                              return_tokens=True)
  for i in range(len(chats)):
    np.testing.assert_array_equal(out[i, :lengths[i]], arrays[f"{i}/tokens"], err_msg=str(i))
  # Told otherwise, the same fuser runs with the offsets scheme.
  other = C2C(c2c.receiver, c2c.sharers, c2c.fusers, alignment="offsets")
  assert other.alignment == "offsets" and other.encode(chats[:1])[0].shape[0] == 1
