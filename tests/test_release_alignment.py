"""The release scheme (c2cjax.sections) against the original code's outputs.

Fixtures: ``tests/fixtures/rosetta/`` (made by ``make_alignment_fixtures.py`` with the
original code; see the README there).
"""

import json
import pathlib
import sys

import numpy as np
import pytest

from c2cjax import fuse, sections

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "rosetta"
sys.path.insert(0, str(FIXTURES))
import tiny_tokenizers  # noqa: E402  pylint: disable=g-import-not-at-top


def _load(name):
  return json.loads((FIXTURES / name).read_text())


TINY = _load("alignment_tiny.json")
REAL = _load("alignment_real.json")


@pytest.fixture(scope="module")
def tiny():
  return {n: tiny_tokenizers.load(n) for n in tiny_tokenizers.NAMES}


def _bits(mask) -> str:
  return "".join("1" if x else "0" for x in np.asarray(mask).reshape(-1))


def _check_prompt(got: dict, want: dict):
  assert got["receiver_ids"].tolist() == want["receiver_ids"]
  assert got["sharer_ids"].tolist() == want["sharer_ids"]
  assert _bits(got["attention_mask"]) == want["receiver_attention"]
  assert _bits(got["sharer_attention_mask"]) == want["sharer_attention"]
  assert want["positions"] == "arange"
  assert got["positions"].tolist() == list(range(len(want["receiver_ids"])))
  assert _bits(got["fuse_mask"]) == want["fuse_mask"]


def _check_training(got: dict, want: dict):
  assert got["receiver_ids"].tolist() == want["receiver_ids"]
  assert got["sharer_ids"].tolist() == want["sharer_ids"]
  assert _bits(got["attention_mask"] == 0) == want["receiver_pad"]
  assert _bits(got["sharer_attention_mask"] == 0) == want["sharer_pad"]
  assert _bits(got["fuse_mask"]) == want["fuse_mask"]
  assert _bits(got["loss_mask"]) == want["loss_mask"]
  labels = np.where(got["loss_mask"] > 0, got["receiver_ids"], -100)
  assert labels.tolist() == want["labels"]


def _check_sections(got: sections.SectionAlignment, want: dict):
  assert [[s.kind, [s.start, s.end], [s.start, s.end]] for s in got.sections] == want["sections"]
  assert _bits(got.message_mask) == want["message_mask"]
  assert [got.receiver_text, got.sharer_text] == want["texts"]


def _run(aligner, rec):
  """Compares every recorded output of ``rec``; a recorded error must be raised too."""
  msgs = rec["messages"]
  full = msgs + [{"role": "assistant", "content": rec["response"]}]
  calls = {
      "sections": (lambda: aligner.align(msgs, "generate"), _check_sections),
      "generate": (lambda: aligner.prompt(msgs), _check_prompt),
      "logits": (lambda: aligner.prompt(msgs + [{"role": "assistant",
                                                 "content": "The correct answer is"}],
                                        continue_final=True), _check_prompt),
      "training": (lambda: aligner.example(full), _check_training),
  }
  for key, (call, check) in calls.items():
    if "error" in rec[key]:
      assert "Section count mismatch" in rec[key]["error"]
      with pytest.raises(ValueError, match="different sections"):
        call()
    else:
      check(call(), rec[key])


@pytest.mark.parametrize("rec", TINY, ids=lambda r: "-".join(
    (r["receiver"], r["sharer"], r["strategy"], r["case"])))
def test_tiny_matches_release(tiny, rec):
  aligner = sections.ReleaseAligner(tiny[rec["receiver"]], tiny[rec["sharer"]],
                                    rec["strategy"], sections=True)
  _run(aligner, rec)


@pytest.mark.parametrize("rec", [r for r in TINY if "unaligned" in r],
                         ids=lambda r: r["case"])
def test_tiny_unaligned_matches_release(tiny, rec):
  """Same vocabulary (Qwen3 / Qwen2.5): the release's recipe path without its aligner."""
  aligner = sections.ReleaseAligner(tiny[rec["receiver"]], tiny[rec["sharer"]])
  assert not aligner.sections  # auto: one vocabulary model
  want, msgs = rec["unaligned"], rec["messages"]
  for key, got in (("generate", aligner.prompt(msgs)),
                   ("logits", aligner.prompt(msgs + [{"role": "assistant", "content":
                                                      "The correct answer is"}],
                                             continue_final=True))):
    assert got["receiver_ids"].tolist() == want[key]["receiver_ids"]
    assert got["sharer_ids"].tolist() == want[key]["receiver_ids"]
    assert _bits(got["fuse_mask"]) == want[key]["fuse_mask"]
    assert want[key]["positions"] == "arange"
  got = aligner.example(msgs + [{"role": "assistant", "content": rec["response"]}])
  assert got["receiver_ids"].tolist() == want["training"]["receiver_ids"]
  assert _bits(got["fuse_mask"]) == want["training"]["fuse_mask"]
  assert _bits(got["loss_mask"]) == want["training"]["loss_mask"]


def test_fixtures_cover_the_cases():
  cases = {r["case"] for r in TINY}
  assert cases == {"single", "system", "multi", "unicode", "code", "long"}
  assert {(r["receiver"], r["sharer"]) for r in TINY} == {
      ("qwen3", "qwen2"), ("qwen3", "llama3"), ("llama3", "qwen3")}
  # Pads on both sides, fused and unfused runs: the fixtures exercise the rules.
  gen = [r["generate"] for r in TINY]
  assert any("0" in g["receiver_attention"] for g in gen)
  assert any("0" in g["sharer_attention"] for g in gen)
  assert all("1" in g["fuse_mask"] and "0" in g["fuse_mask"] for g in gen)


def test_token_map_is_context_free(tiny):
  a = sections.ReleaseAligner(tiny["qwen3"], tiny["llama3"], "longest", sections=True)
  ids = tiny["qwen3"]("café 🚀 and the fox", add_special_tokens=False)["input_ids"]
  assert a.token_map(ids).tolist() == [int(a.token_map([i])[0]) for i in ids]


def test_schemes_and_errors(tiny):
  assert sections.check_scheme("release") == "release"
  with pytest.raises(ValueError, match="unknown alignment scheme"):
    sections.check_scheme("tokens")
  with pytest.raises(ValueError, match="unknown strategy"):
    sections.ReleaseAligner(tiny["qwen3"], tiny["llama3"], "middle")
  a = sections.ReleaseAligner(tiny["qwen3"], tiny["llama3"])
  assert a.sections
  with pytest.raises(ValueError, match="end with an assistant"):
    a.example([{"role": "user", "content": "hi"}])


@pytest.mark.realweights
@pytest.mark.parametrize("rec", REAL, ids=lambda r: f"{r['strategy']}-{r['case']}")
def test_offline_pair_matches_release(real, rec):
  """SmolLM2 receiver, Gemma-3-270M sharer (no chat template: the release's default)."""
  smol, gemma = real
  assert not gemma.chat_template
  _run(sections.ReleaseAligner(smol, gemma, rec["strategy"]), rec)


@pytest.mark.parametrize("pair", ["28->24", "30->18", "16->36", "36->28"])
def test_release_last_aligned_matches_original(pair):
  want = _load("layer_maps.json")[pair]
  nr, ns = (int(x) for x in pair.split("->"))
  got = fuse.last_aligned_clamped(nr, ns)
  assert list(got.receiver) == [int(k) for k in want]
  assert [[s] for s in got.sharer] == list(want.values())


def test_chat_encoder_release_scheme(tiny):
  from c2cjax.data import chat, pipeline  # pylint: disable=g-import-not-at-top
  rec = next(r for r in TINY if (r["receiver"], r["sharer"], r["strategy"], r["case"]) ==
             ("qwen3", "llama3", "first", "multi"))
  rtok = tiny["qwen3"]
  aligner = sections.ReleaseAligner(rtok, tiny["llama3"])
  enc = chat.ChatEncoder(rtok, 4096, (aligner,), alignment="release")
  full = rec["messages"] + [{"role": "assistant", "content": rec["response"]}]
  ex = enc(full)
  assert isinstance(ex["sharer_ids"], tuple) and isinstance(ex["sharer_attention_mask"], tuple)
  one = lambda e: {**e, "sharer_ids": e["sharer_ids"][0],
                   "sharer_attention_mask": e["sharer_attention_mask"][0]}
  _check_training(one(ex), rec["training"])
  prompt = one(enc.prompt(rec["messages"]))
  assert prompt["sharer_ids"].tolist() == rec["generate"]["sharer_ids"]
  assert _bits(prompt["fuse_mask"]) == rec["generate"]["fuse_mask"]
  batch = pipeline.pad_examples([ex], length=len(ex["receiver_ids"]) + 3, pad_ids=enc.pad_ids)
  assert batch["sharer_attention_mask"][0][0, -3:].tolist() == [0, 0, 0]
  # Truncation keeps the loss tokens that fit; none left -> None.
  start = rec["training"]["loss_mask"].index("1")
  short = chat.ChatEncoder(rtok, start + 2, (aligner,), alignment="release")(full)
  assert short["loss_mask"].tolist()[-2:] == [1, 1] and len(short["sharer_ids"][0]) == start + 2
  assert chat.ChatEncoder(rtok, start, (aligner,), alignment="release")(full) is None
  # "multi" fuses three message runs (user, assistant, user) before the response.
  assert chat.ChatEncoder(rtok, 4096, (aligner,), alignment="release", max_runs=3)(full)
  assert chat.ChatEncoder(rtok, 4096, (aligner,), alignment="release", max_runs=2)(full) is None
  # Two sharers with different templates pad the receiver differently.
  two = chat.ChatEncoder(rtok, 4096, (aligner, sections.ReleaseAligner(rtok, tiny["qwen2"],
                                                                        sections=True)),
                         alignment="release")
  with pytest.raises(ValueError, match="align the receiver differently"):
    two(full)
  with pytest.raises(TypeError, match="ReleaseAligner"):
    chat.ChatEncoder(rtok, 64, (aligner,))
  with pytest.raises(ValueError, match="offsets scheme"):
    chat.ChatEncoder(rtok, 64, (aligner,), alignment="release", fuse_last=True)


def test_evaluation_messages_render_to_the_mcq_prompt(tiny):
  """The release scheme's evaluation prompt is the MCQ prompt as messages: rendered by the
  receiver's own template it is the offsets scheme's prompt text."""
  from c2cjax.evaluation import prompts  # pylint: disable=g-import-not-at-top
  from c2cjax.evaluation.datasets import Question  # pylint: disable=g-import-not-at-top
  q = Question("t/0", "t", "t", "t", "What is 2+2?", ("3", "4", "5", "22"), 1)
  tok = tiny["qwen2"]
  for config in (prompts.DEFAULT, prompts.PromptConfig(system="Be brief.")):
    for bg in (None, "Two and two make four."):
      msgs = prompts.mcq_messages(q, config, bg)
      assert sections.render(tok, msgs, "generate") == prompts.mcq_prompt(q, tok, config, bg)
  a = sections.ReleaseAligner(tok, tiny["llama3"])
  ex = a.prompt(prompts.mcq_messages(q))
  assert ex["fuse_mask"].sum() > 0 and len(ex["sharer_ids"]) == len(ex["receiver_ids"])
