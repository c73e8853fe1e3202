"""Tests for c2cjax.align: offset-based token alignment between tokenizers."""

import numpy as np
import pytest

from c2cjax import align

TEXTS = [
    "Hello  world, this is a tiny corpus.",
    "def f(x):\n\tif x:\n        return x + 1  # done\n\n\n",
    "你好，世界！ 日本語のテキスト 🤖 emoji 👨‍👩‍👧 flags 🇯🇵",
    "a  b   c\n\n\td \u00a0 e\u0301 café",
    "   leading and trailing   ",
]


# ----------------------------------------------------------------- pure offsets


def test_align_offsets_hand_checked():
  # Sharer: "Hello" split 2+3, "X" and "wo" in one token, char 11 dropped (a gap).
  sharer = [(0, 2), (2, 5), (5, 8), (8, 11), (12, 14)]
  receiver = [(0, 0), (0, 5), (5, 6), (6, 11), (11, 12), (12, 14)]
  np.testing.assert_array_equal(align.align_offsets(receiver, sharer, "first"),
                                [-1, 0, 2, 2, 3, 4])
  np.testing.assert_array_equal(align.align_offsets(receiver, sharer, "longest"),
                                [-1, 1, 2, 3, 3, 4])


def test_align_offsets_byte_pieces_and_empty():
  # Two byte-level pieces of one character share its span; then a 2-char token.
  sharer = [(0, 0), (0, 1), (0, 1), (1, 3)]
  np.testing.assert_array_equal(align.align_offsets([(0, 3)], sharer, "first"), [1])
  np.testing.assert_array_equal(align.align_offsets([(0, 3)], sharer, "longest"), [3])
  np.testing.assert_array_equal(align.align_offsets([(0, 1)], sharer, "longest"), [1])
  np.testing.assert_array_equal(align.align_offsets([(0, 1), (1, 2)], [], "first"), [-1, -1])
  # No sharer token overlaps and none precedes: the following one.
  np.testing.assert_array_equal(align.align_offsets([(0, 1)], [(2, 3)], "first"), [0])


def test_unknown_strategy():
  with pytest.raises(ValueError, match="unknown strategy"):
    align.align_offsets([(0, 1)], [(0, 1)], "middle")


# ------------------------------------------------------------- tiny tokenizers

CORPUS = TEXTS + ["the quick brown fox jumps over the lazy dog"] * 3
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]


def tiny_tokenizer(kind: str, bos: bool = False):
  """A fast tokenizer trained in-test: "word" (WordLevel, whitespace dropped) or "bpe"."""
  from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast

  if kind == "word":
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS)
  else:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  if bos:
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
  return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 pad_token="<pad>", unk_token="<unk>")


def _overlap(a, b) -> int:
  return min(a[1], b[1]) - max(a[0], b[0])


@pytest.mark.parametrize("strategy", align.STRATEGIES)
@pytest.mark.parametrize("receiver_kind,sharer_kind", [("bpe", "word"), ("word", "bpe")])
def test_tiny_pair(receiver_kind, sharer_kind, strategy):
  rec, sh = tiny_tokenizer(receiver_kind, bos=True), tiny_tokenizer(sharer_kind, bos=True)
  aligner = align.TokenAligner(rec, sh, strategy)
  assert not aligner.identity
  for text in TEXTS:
    out = aligner.align(text, add_special_tokens=True)
    assert len(out.sharer_ids) == len(out.receiver_ids) == len(out.sharer_offsets)
    assert out.sharer_ids.dtype == np.int32
    # The receiver's BOS has no span and maps to the sharer's BOS.
    assert out.receiver_ids[0] == rec.bos_token_id and out.sharer_ids[0] == sh.bos_token_id
    s_ids, s_offs = align.encode(sh, text)
    for r_span, s_id, s_span in zip(out.receiver_offsets[1:], out.sharer_ids[1:],
                                    out.sharer_offsets[1:]):
      assert s_id in s_ids[(s_offs == s_span).all(1)]  # a real sharer token of this text
      if text[r_span[0]:r_span[1]].strip():  # the word-level sharer drops whitespace
        assert _overlap(r_span, s_span) > 0, (text, r_span, s_span)


def test_tiny_whitespace_falls_back_to_previous_token():
  rec, sh = tiny_tokenizer("bpe"), tiny_tokenizer("word")
  text = "the\n\n"
  out = align.TokenAligner(rec, sh).align(text)
  assert not text[slice(*out.receiver_offsets[-1])].strip()  # a whitespace-only token
  assert sh.convert_ids_to_tokens(out.sharer_ids.tolist()) == ["the"] * len(out)


def test_tiny_identity_and_batch():
  rec = tiny_tokenizer("bpe")
  same = align.TokenAligner(rec, tiny_tokenizer("bpe"))  # equal definition, other object
  assert same.identity
  out = same.align(TEXTS[2], add_special_tokens=True)
  np.testing.assert_array_equal(out.sharer_ids, out.receiver_ids)
  aligner = align.TokenAligner(rec, tiny_tokenizer("word"), "longest")
  for one, text in zip(aligner.align_batch(TEXTS), TEXTS):
    ref = aligner.align(text)
    np.testing.assert_array_equal(one.receiver_ids, ref.receiver_ids)
    np.testing.assert_array_equal(one.sharer_ids, ref.sharer_ids)


# ------------------------------------------------------------ real tokenizers


# the `real` fixture (SmolLM2 and Gemma 3 tokenizers) lives in conftest.py


def _real_texts(smol):
  chat = smol.apply_chat_template(
      [{"role": "user", "content": "Write code:\n```python\ndef f(x):\n    return x\n```"},
       {"role": "assistant", "content": "Sure — 你好 🤖!\n\n\tDone."}], tokenize=False)
  return [chat] + TEXTS


@pytest.mark.realweights
@pytest.mark.parametrize("strategy", align.STRATEGIES)
@pytest.mark.parametrize("direction", ["smol->gemma", "gemma->smol"])
def test_real_alignment_covers(real, direction, strategy):
  smol, gemma = real
  rec, sh = (smol, gemma) if direction == "smol->gemma" else (gemma, smol)
  aligner = align.TokenAligner(rec, sh, strategy, bos_first=False)
  for text in _real_texts(smol):
    out = aligner.align(text)
    assert len(out.sharer_ids) == len(out.receiver_ids) > 0
    s_ids, s_offs = align.encode(sh, text)
    for r_span, s_span in zip(out.receiver_offsets.tolist(), out.sharer_offsets.tolist()):
      assert _overlap(r_span, s_span) > 0, (text, r_span, s_span)
      if strategy == "first":
        assert s_span[0] <= r_span[0] < s_span[1]  # covers the first character
      else:
        best = max(_overlap(r_span, s) for s in s_offs.tolist())
        assert _overlap(r_span, s_span) == best
    for s_id, s_span in zip(out.sharer_ids, out.sharer_offsets):
      assert s_id in s_ids[(s_offs == s_span).all(1)]


@pytest.mark.realweights
def test_real_strategies_differ(real):
  smol, gemma = real
  text = "<|im_start|>user\nHello  world<|im_end|>\n"
  first = align.TokenAligner(smol, gemma, "first", bos_first=False).align(text)
  longest = align.TokenAligner(smol, gemma, "longest", bos_first=False).align(text)
  rec = smol.convert_ids_to_tokens(first.receiver_ids.tolist())
  pairs = dict(zip(rec, zip(gemma.convert_ids_to_tokens(first.sharer_ids.tolist()),
                            gemma.convert_ids_to_tokens(longest.sharer_ids.tolist()))))
  # Template specials Gemma lacks map to its pieces of the same text.
  assert pairs["<|im_start|>"] == ("<", "start")
  assert pairs["<|im_end|>"] == ("<", "end")
  # "Ġworld" spans " world"; Gemma splits it as "▁▁" + "world".
  assert pairs["Ġworld"] == ("▁▁", "world")
  assert pairs["Hello"] == ("Hello", "Hello")


@pytest.mark.realweights
def test_real_identity_and_specials(real):
  smol, gemma = real
  aligner = align.TokenAligner(smol, smol)
  assert aligner.identity
  out = aligner.align(_real_texts(smol)[0])
  np.testing.assert_array_equal(out.sharer_ids, out.receiver_ids)
  # Gemma adds a span-less <bos>; it maps to SmolLM2's declared BOS.
  out = align.TokenAligner(gemma, smol).align("Hi there", add_special_tokens=True)
  assert out.receiver_ids[0] == gemma.bos_token_id
  assert out.sharer_ids[0] == smol.bos_token_id
  assert smol.convert_ids_to_tokens(out.sharer_ids[1:].tolist()) == ["Hi", "Ġthere"]


@pytest.mark.realweights
def test_sharer_bos_at_position_zero(real):
  smol, gemma = real
  text = _real_texts(smol)[0]
  out = align.TokenAligner(smol, gemma).align(text)
  plain = align.TokenAligner(smol, gemma, bos_first=False).align(text)
  assert out.sharer_ids[0] == gemma.bos_token_id != plain.sharer_ids[0]
  np.testing.assert_array_equal(out.sharer_ids[1:], plain.sharer_ids[1:])


@pytest.mark.realweights
def test_real_vocab_map(real):
  smol, gemma = real
  maps = {s: align.TokenAligner(smol, gemma, s).vocab_map() for s in align.STRATEGIES}
  for strategy, m in maps.items():
    assert m.shape == (len(smol),) and m.dtype == np.int32
    assert 0 <= m.min() and m.max() < len(gemma)
    assert m[smol.eos_token_id] == gemma.eos_token_id
    assert m[smol.bos_token_id] == gemma.bos_token_id
    for word in [" hello", " world", " Paris", "Hello", " the", " computer", "ing", "\n"]:
      (rid,) = smol(word, add_special_tokens=False)["input_ids"]
      text = gemma.decode([int(m[rid])])
      assert text and (word.startswith(text) if strategy == "first" else text in word), (
          strategy, word, text)
  # a word the sharer splits: "first" takes its first piece, "longest" its longest
  differ = np.flatnonzero(maps["first"] != maps["longest"])
  assert len(differ) > 0
  rid = int(differ[0])
  pieces = gemma(smol.decode([rid]), add_special_tokens=False)["input_ids"]
  assert maps["first"][rid] == pieces[0] and maps["longest"][rid] in pieces
  # sized to a model vocabulary past the tokenizer's; identity for one tokenizer
  aligner = align.TokenAligner(smol, gemma)
  big = aligner.vocab_map(len(smol) + 3)
  np.testing.assert_array_equal(big[:len(smol)], maps["first"])
  assert (big[len(smol):] == aligner.special_id(-1)).all()
  np.testing.assert_array_equal(align.TokenAligner(smol, smol).vocab_map(),
                                np.arange(len(smol)))
