"""Tests for c2cjax.data: chat encoding, sources and the grain pipeline."""

import json

import grain
import numpy as np
import pytest

from c2cjax import align
from c2cjax.data import chat, pipeline, sources

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]
N_RECORDS = 60
RECORDS = [{"instruction": f"question w{i}" + " more" * (i % 7), "input": "",
            "output": f"answer w{i}" + " words" * (i % 5)} for i in range(N_RECORDS)]
CORPUS = ["system user assistant hi there hello friend how are you fine thanks"] + [
    f"{r['instruction']} {r['output']}" for r in RECORDS]


def tiny_tokenizer(kind: str, chat_template: str | None = CHATML):
  """A fast tokenizer trained in-test: "word" (WordLevel, whitespace dropped) or "bpe"."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  if kind == "word":
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIALS)
  else:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS[:4],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer)
  out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                pad_token="<pad>", unk_token="<unk>")
  out.chat_template = chat_template
  return out


@pytest.fixture(scope="module")
def toks():
  return tiny_tokenizer("word"), tiny_tokenizer("bpe", chat_template=None)


@pytest.fixture(scope="module")
def encoder(toks):
  rec, sh = toks
  return chat.ChatEncoder(rec, max_len=24, aligners=(align.TokenAligner(rec, sh),))


# ------------------------------------------------------------------------ chat

CONV = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello friend"}]


def test_masks_hand_checked(toks, encoder):
  rec, sh = toks
  ex = encoder(CONV)
  assert rec.convert_ids_to_tokens(ex["receiver_ids"].tolist()) == [
      "<|im_start|>", "user", "hi", "there", "<|im_end|>",
      "<|im_start|>", "assistant", "hello", "friend", "<|im_end|>"]
  # Prompt = 7 tokens up to "assistant"; targets: response + end of turn.
  np.testing.assert_array_equal(ex["loss_mask"], [0] * 7 + [1] * 3)
  np.testing.assert_array_equal(ex["fuse_mask"], [1] * 6 + [0] * 4)  # prompt minus its last
  np.testing.assert_array_equal(ex["attention_mask"], [1] * 10)
  # The byte-level sharer has no "<|im_start|>": its first piece, "<".
  sharer = sh.convert_ids_to_tokens(ex["sharer_ids"][0].tolist())
  assert len(sharer) == 10 and sharer[0] == "<" and sharer[2].startswith("h")
  text = chat.render(rec, CONV, add_generation_prompt=False)
  ref = align.TokenAligner(rec, sh).align(text)
  np.testing.assert_array_equal(ex["sharer_ids"][0], ref.sharer_ids)
  assert isinstance(ex["sharer_ids"], tuple) and len(ex["sharer_ids"]) == 1  # one sharer
  flat = dict(ex, sharer_ids=ex["sharer_ids"][0])
  assert {k: v.dtype for k, v in flat.items()} == dict.fromkeys(ex, np.int32)


def test_fuse_mask_options(toks):
  rec, _ = toks
  last = chat.ChatEncoder(rec, max_len=24, fuse_last=True)
  both = chat.ChatEncoder(rec, max_len=24, fuse_last=True, fuse_response=True)
  np.testing.assert_array_equal(last(CONV)["fuse_mask"], [1] * 7 + [0] * 3)
  np.testing.assert_array_equal(both(CONV)["fuse_mask"], [1] * 10)
  resp = chat.ChatEncoder(rec, max_len=24, fuse_response=True)(CONV)["fuse_mask"]
  np.testing.assert_array_equal(resp, [1] * 6 + [0] + [1] * 3)
  np.testing.assert_array_equal(last.prompt(CONV[:1])["fuse_mask"], [1] * 7)


def test_multi_turn_and_truncation(toks):
  rec, sh = toks
  conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
          {"role": "user", "content": "how are you"}, {"role": "assistant", "content": "fine"}]
  ex = chat.ChatEncoder(rec, max_len=64)(conv)
  assert "sharer_ids" not in ex
  # Only the last assistant turn is a target; earlier turns are prompt (as in C2C).
  n = len(ex["receiver_ids"])  # 4 + 4 + 6 + 4 tokens
  assert n == 18
  np.testing.assert_array_equal(ex["loss_mask"], [0] * 16 + [1] * 2)
  np.testing.assert_array_equal(ex["fuse_mask"], [1] * 15 + [0] * 3)
  cut = chat.ChatEncoder(rec, max_len=17)(conv)
  np.testing.assert_array_equal(cut["loss_mask"], [0] * 16 + [1])
  assert chat.ChatEncoder(rec, max_len=16)(conv) is None  # no response token left
  two = chat.ChatEncoder(rec, 64, (align.TokenAligner(rec, sh), align.TokenAligner(rec, rec)))
  ex2 = two(conv)
  assert isinstance(ex2["sharer_ids"], tuple) and len(ex2["sharer_ids"]) == 2
  np.testing.assert_array_equal(ex2["sharer_ids"][1], ex2["receiver_ids"])


def test_prompt_encoding(toks, encoder):
  rec, _ = toks
  ex = encoder.prompt(CONV[:1])
  assert rec.convert_ids_to_tokens(ex["receiver_ids"].tolist())[-2:] == ["<|im_start|>",
                                                                         "assistant"]
  np.testing.assert_array_equal(ex["fuse_mask"], [1] * 6 + [0])
  assert chat.encode_prompt(rec, CONV[:1]) == ex["receiver_ids"].tolist()
  batch = pipeline.pad_examples([ex, encoder.prompt(CONV)], length=12, side="left",
                                pad_ids=encoder.pad_ids)
  assert batch["receiver_ids"].shape == (2, 12)
  np.testing.assert_array_equal(batch["attention_mask"][0], [0] * 5 + [1] * 7)
  assert batch["receiver_ids"][0, 0] == rec.pad_token_id
  with pytest.raises(TypeError, match=r"pad_ids\['sharer_ids'\] must be a tuple of 1 pad ids"):
    pipeline.pad_examples([ex], length=12, pad_ids={**encoder.pad_ids, "sharer_ids": 0})


def test_no_chat_template_is_a_clear_error(toks):
  with pytest.raises(ValueError, match="has no chat template"):
    chat.ChatEncoder(toks[1], max_len=8)
  with pytest.raises(ValueError, match="has no chat template"):
    chat.encode_prompt(toks[1], CONV)


def test_to_messages_formats():
  hermes = {"conversations": [{"from": "system", "value": "be nice"},
                              {"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}
  assert chat.to_messages(hermes) == [{"role": "system", "content": "be nice"},
                                      {"role": "user", "content": "hi"},
                                      {"role": "assistant", "content": "yo"}]
  assert [m["role"] for m in chat.to_messages(hermes, drop_system=True)] == ["user", "assistant"]
  assert chat.to_messages({"instruction": "Do", "input": "this", "response": "ok"}) == [
      {"role": "user", "content": "Do\nthis"}, {"role": "assistant", "content": "ok"}]
  assert chat.to_messages({"instruction": "Do", "input": "", "output": "ok"})[0]["content"] == "Do"
  tfds_record = {"messages": {"role": [b"user", b"assistant"],
                              "content": ["你好".encode(), b"ok"]}, "source": b"x"}
  assert chat.to_messages(tfds_record)[0] == {"role": "user", "content": "你好"}
  with pytest.raises(ValueError, match="unknown chat role"):
    chat.to_messages({"conversations": [{"from": "robot", "value": "x"}]})
  with pytest.raises(ValueError, match="unrecognised"):
    chat.to_messages({"text": "x"})


# --------------------------------------------------------------------- sources


def test_offline_source_and_split(tmp_path):
  src = sources.load_source("offline_instruct/alpaca_en_demo", data_dir=tmp_path)
  assert len(src) == 999
  raw = json.loads(sources.instruct_file("alpaca_en_demo").read_text())
  for i in (0, 500, 998):  # upstream order is kept
    msgs = chat.to_messages(src[i])
    assert msgs == chat.to_messages(raw[i]) and src[i]["source"] == b"alpaca_en_demo"
  train, held = sources.split_source(src, max_examples=300, heldout_fraction=0.05, seed=1)
  assert len(train) == 285 and len(held) == 15
  assert set(train.indices).isdisjoint(held.indices)
  assert set(train.indices) | set(held.indices) == set(range(300))
  again, held2 = sources.split_source(src, max_examples=300, heldout_fraction=0.05, seed=1)
  np.testing.assert_array_equal(held.indices, held2.indices)
  _, held3 = sources.split_source(src, max_examples=300, heldout_fraction=0.05, seed=2)
  assert set(held3.indices) != set(held.indices)
  assert chat.to_messages(held[0]) == chat.to_messages(raw[held.indices[0]])


def test_processes_sharing_a_data_dir_prepare_it_once(tmp_path):
  """Several processes of one run (or hosts on a shared disk) loading the same fresh source:
  all of them succeed (TFDS alone raced on its final rename: one process failed)."""
  import os
  import pathlib
  import subprocess
  import sys
  root = pathlib.Path(__file__).resolve().parents[1]
  code = ("import sys; from c2cjax.data import sources; "
          "print(len(sources.load_source('offline_instruct/alpaca_en_demo', "
          "data_dir=sys.argv[1])))")
  env = dict(os.environ, PYTHONPATH=str(root))
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "tfds")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(3)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  sizes = {out.strip().splitlines()[-1] for out, _ in outs}  # after TFDS's own messages
  assert sizes == {"999"}, sizes


def test_openhermes_from_manual_dir(tmp_path):
  records = [{"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                {"from": "gpt", "value": "a"}], "source": None},
             {"conversations": [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}],
              "source": "glaive-code-assist"}]
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / sources.OPENHERMES_FILE).write_text(json.dumps(records))
  src = sources.load_source("open_hermes25", data_dir=tmp_path / "tfds",
                            manual_dir=tmp_path / "manual")
  assert len(src) == 2
  assert chat.to_messages(src[0]) == chat.to_messages(records[0])
  assert src[1]["source"] == b"glaive-code-assist"


def test_openhermes_offline_error(monkeypatch, tmp_path):
  import huggingface_hub

  def offline(*args, **kwargs):
    raise OSError("no network")

  monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
  with pytest.raises(RuntimeError, match="OpenHermes-2.5 could not be fetched.*offline_instruct"):
    sources.load_source("open_hermes25", data_dir=tmp_path)


# -------------------------------------------------------------------- pipeline


def _config(**kw):
  base = dict(batch_size=4, bucket_lengths=(16,), seed=0, shard_index=0, shard_count=1,
              read_threads=2, prefetch_batches=2)
  return pipeline.PipelineConfig(**(base | kw))


def _record_ids(rec, batch) -> list[int]:
  out = []
  for row, mask in zip(batch["receiver_ids"], batch["attention_mask"]):
    words = [w for w in rec.convert_ids_to_tokens(row[mask == 1].tolist()) if w[0] == "w"]
    if words:
      out.append(int(words[0][1:]))
  return out


def test_batches_static_shapes_and_masks(toks, encoder):
  rec, _ = toks
  batches = list(pipeline.make_dataset(RECORDS, encoder, _config(drop_remainder=False)))
  assert len(batches) == -(-N_RECORDS // 4)
  for b in batches:
    assert set(b) == {"receiver_ids", "sharer_ids", "attention_mask", "loss_mask", "fuse_mask"}
    assert isinstance(b["sharer_ids"], tuple) and len(b["sharer_ids"]) == 1  # one sharer
    flat = dict(b, sharer_ids=b["sharer_ids"][0])
    shapes = {k: v.shape for k, v in flat.items()}
    assert len(set(shapes.values())) == 1 and shapes["receiver_ids"] in {(4, 16), (4, 24)}
    assert all(v.dtype == np.int32 for v in flat.values())
    lengths = b["attention_mask"].sum(1)
    # Right padding: real tokens first; masks only on real tokens.
    for row, n in enumerate(lengths):
      assert b["attention_mask"][row, :n].all() and not b["attention_mask"][row, n:].any()
    assert not (b["loss_mask"] & (1 - b["attention_mask"])).any()
    assert not (b["fuse_mask"] & b["loss_mask"]).any()
    # A batch uses the smallest bucket that fits it.
    assert b["receiver_ids"].shape[1] == (16 if lengths.max() <= 16 else 24)
  assert sorted(i for b in batches for i in _record_ids(rec, b)) == list(range(N_RECORDS))
  assert {b["receiver_ids"].shape[1] for b in batches} == {16, 24}


def test_order_deterministic_by_seed(toks, encoder):
  rec, _ = toks
  order = lambda seed: [i for b in pipeline.make_dataset(RECORDS, encoder, _config(seed=seed))
                        for i in _record_ids(rec, b)]
  assert order(0) == order(0)
  assert order(0) != order(1)
  assert sorted(order(0)) == list(range(N_RECORDS))  # 60 = 15 full batches


def test_host_sharding_disjoint_and_covering(toks, encoder):
  rec, _ = toks
  def ids(index, count, even):
    cfg = _config(shard_index=index, shard_count=count, even_shards=even, drop_remainder=False)
    return [i for b in pipeline.make_dataset(RECORDS[:59], encoder, cfg)
            for i in _record_ids(rec, b)]
  shards = [ids(i, 3, even=False) for i in range(3)]
  assert sum(map(len, shards)) == 59 and set().union(*map(set, shards)) == set(range(59))
  even = [ids(i, 3, even=True) for i in range(3)]
  assert [len(s) for s in even] == [19, 19, 19]
  assert len(set().union(*map(set, even))) == 57  # the shuffled stream's last 2 dropped
  with pytest.raises(ValueError, match="out of range"):
    pipeline.host_shard(_config(shard_index=3, shard_count=3))


def _equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_host_blocks_rebuild_the_one_host_batches(toks, encoder):
  """Hosts read their own blocks of one shuffled stream: side by side, their micro-batches
  are the one-host run's, record for record, over several epochs."""
  rec, _ = toks

  def batches(index, count, size, block):
    cfg = _config(batch_size=size, shard_index=index, shard_count=count, shard_block=block,
                  num_epochs=None)
    it = iter(pipeline.make_dataset(RECORDS, encoder, cfg))
    return [_record_ids(rec, next(it)) for _ in range(20)]  # 160 rows: 3 epochs of 60

  one = batches(0, 1, 8, 1)
  h0, h1 = (batches(i, 2, 4, 2) for i in range(2))  # 2 micro-batches of 2 rows a host
  for k in range(20):
    assert h0[k][:2] + h1[k][:2] + h0[k][2:] + h1[k][2:] == one[k], k
  assert one[0] != list(range(8))  # shuffled


def test_iterator_state_resumes_exactly(toks, encoder):
  cfg = _config(num_epochs=None)  # repeat forever: state crosses epoch boundaries
  it = iter(pipeline.make_dataset(RECORDS, encoder, cfg))
  for _ in range(17):  # past the end of epoch one (15 batches)
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  resumed = iter(pipeline.make_dataset(RECORDS, encoder, cfg))
  resumed.set_state(state)
  for want in expected:
    _equal(next(resumed), want)


def test_iterator_orbax_checkpoint(toks, encoder, tmp_path):
  import orbax.checkpoint as ocp

  cfg = _config()
  it = iter(pipeline.make_dataset(RECORDS, encoder, cfg))
  next(it), next(it)
  ckpt = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  ckpt.save(tmp_path / "data", args=grain.checkpoint.CheckpointSave(it))
  want = next(it)
  restored = ckpt.restore(tmp_path / "data", args=grain.checkpoint.CheckpointRestore(
      iter(pipeline.make_dataset(RECORDS, encoder, cfg))))
  _equal(next(restored), want)


# -------------------------------------------------------------- real tokenizers


# the `real` fixture (SmolLM2 and Gemma 3 tokenizers) lives in conftest.py


@pytest.mark.realweights
def test_real_chatml_masks(real, tmp_path):
  smol, gemma = real
  enc = chat.ChatEncoder(smol, max_len=256, aligners=(align.TokenAligner(smol, gemma),))
  conv = [{"role": "user", "content": "Say hi in Chinese 🙂"},
          {"role": "assistant", "content": "你好！"}]
  ex = enc(conv)
  ids = ex["receiver_ids"]
  prompt = chat.encode_prompt(smol, conv[:1])
  assert ids[:len(prompt)].tolist() == prompt  # the default system prompt is included
  assert smol.decode(ids[ex["loss_mask"] == 1]) == "你好！<|im_end|>\n"
  assert ex["fuse_mask"].sum() == len(prompt) - 1 and ex["fuse_mask"][:len(prompt) - 1].all()
  assert ex["sharer_ids"][0].shape == ids.shape
  assert gemma.decode(ex["sharer_ids"][0][ex["loss_mask"] == 1][:1]) in ("你好", "你", "▁你好")

  src = sources.load_source("offline_instruct/gpteacher_codegen", data_dir=tmp_path,
                            split="train[:32]")
  cfg = _config(batch_size=8, bucket_lengths=(128,), drop_remainder=True)
  batches = list(pipeline.make_dataset(src, enc, cfg))
  assert batches and all(b["receiver_ids"].shape in {(8, 128), (8, 256)} for b in batches)
  assert all(b["sharer_ids"][0].shape == b["receiver_ids"].shape for b in batches)
  assert all((b["loss_mask"].sum(1) > 0).all() for b in batches)


def test_multiprocess_workers_cover_and_resume(toks, encoder):
  rec, _ = toks
  # Workers take slices of the records (another order) and batch them separately.
  cfg = _config(worker_count=2, drop_remainder=False)
  it = iter(pipeline.make_dataset(RECORDS, encoder, cfg))
  try:
    batches = [next(it) for _ in range(3)]
    state = it.get_state()
    batches += list(it)
  finally:
    it.close()
  assert sorted(i for b in batches for i in _record_ids(rec, b)) == list(range(N_RECORDS))
  resumed = iter(pipeline.make_dataset(RECORDS, encoder, cfg))
  try:
    resumed.set_state(state)
    _equal(next(resumed), batches[3])
  finally:
    resumed.close()
