"""Receiver-alone MMLU-Redux answers of SmolLM2-135M-Instruct: c2cjax.eval vs transformers.

24 questions (``load_mmlu_redux(limit=24, seed=0)``), the ``logits`` and ``cloze`` methods;
the reference is written here in plain transformers (fp32, the same GGUF file), batched.
"""

import numpy as np
import pytest

from c2cjax import load_model, offline
from c2cjax.evaluation import cloze_prompt, load_mmlu_redux, mcq_prompt
from c2cjax.evaluation.answerers import Solo, System
from c2cjax.evaluation.runner import Evaluator, Settings
from tests import hf_gguf

pytestmark = [pytest.mark.realweights, pytest.mark.usefixtures("optimized_xla")]
torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")  # transformers needs it to load GGUF

N = 24  # the transformers reference costs several seconds a question on 2 cores
TIE = 1e-3  # a question whose reference top-2 scores are closer than this may flip


@pytest.fixture(scope="module")
def models():
  try:
    path = offline.smollm2_gguf()
  except offline.MissingOfflinePackage as e:
    pytest.skip(str(e))
  torch.set_num_threads(2)
  hf = hf_gguf.causal_lm(path)
  return load_model(path), hf


def _hf_letter_scores(hf, tok, questions):
  """[N, 4] max over "X" / " X" of the next-token logits after the MCQ chat prompt."""
  ids = [tok(mcq_prompt(q, tok), add_special_tokens=False)["input_ids"] for q in questions]
  letters = []
  for letter in "ABCD":
    variants = [tok.encode(v, add_special_tokens=False) for v in (letter, " " + letter)]
    assert all(len(v) == 1 for v in variants)
    letters.append([v[0] for v in variants])
  out = np.zeros((len(ids), 4))
  order = np.argsort([len(x) for x in ids])
  for start in range(0, len(order), 8):
    rows = order[start:start + 8]
    width = max(len(ids[i]) for i in rows)
    x = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(x)
    for j, i in enumerate(rows):  # left padding; positions count real tokens only
      x[j, width - len(ids[i]):] = torch.tensor(ids[i])
      mask[j, width - len(ids[i]):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
      last = hf(input_ids=x, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits
    for j, i in enumerate(rows):
      out[i] = [max(float(last[j, -1, t]) for t in letters[k]) for k in range(4)]
  return out


def _hf_cloze_scores(hf, tok, questions):
  """[N, 4] summed log p(" option" | "Question: ...\\nAnswer:").

  Per batch of questions: the contexts once (left-padded), their KV cache repeated for the
  four options, then the options teacher-forced on it (right-padded).
  """
  ctxs, conts = [], []
  for q in questions:
    ctx, options = cloze_prompt(q)
    ids = tok(ctx)["input_ids"]
    ctxs.append(ids)
    conts.append([tok(ctx + o)["input_ids"][len(ids):] for o in options])
  out = np.zeros((len(questions), 4))
  order = np.argsort([len(x) for x in ctxs])
  for start in range(0, len(order), 8):
    rows = order[start:start + 8]
    width = max(len(ctxs[i]) for i in rows)
    x = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(x)
    for j, i in enumerate(rows):
      x[j, width - len(ctxs[i]):] = torch.tensor(ctxs[i])
      mask[j, width - len(ctxs[i]):] = 1
    with torch.inference_mode():
      ctx_out = hf(input_ids=x, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(
          min=0), use_cache=True, logits_to_keep=1)
      cache = ctx_out.cache
      cache.batch_repeat_interleave(4)
      c = max(len(o) for i in rows for o in conts[i])
      y = torch.zeros((4 * len(rows), c), dtype=torch.long)
      for j, i in enumerate(rows):
        for k, o in enumerate(conts[i]):
          y[4 * j + k, :len(o)] = torch.tensor(o)
      n_ctx = mask.sum(-1).repeat_interleave(4)
      full_mask = torch.cat([mask.repeat_interleave(4, 0), torch.ones_like(y[:, :-1])], 1)
      logits = hf(input_ids=y[:, :-1], attention_mask=full_mask, cache=cache,
                  position_ids=n_ctx[:, None] + torch.arange(c - 1)).logits
      steps = torch.cat([ctx_out.logits.repeat_interleave(4, 0), logits], 1)  # [4B, c, V]
      logp = steps.gather(-1, y[..., None])[..., 0] - torch.logsumexp(steps, -1)
    for j, i in enumerate(rows):
      for k, o in enumerate(conts[i]):
        out[i, k] = float(logp[4 * j + k, :len(o)].sum())
  return out


def _check(ours, ref, name):
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, atol=5e-3, rtol=1e-4, err_msg=name)
  top2 = np.sort(ref, axis=1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > TIE
  assert clear.mean() > 0.95, f"{name}: too many near-ties to compare picks"
  np.testing.assert_array_equal(ours.argmax(1)[clear], ref.argmax(1)[clear], err_msg=name)


def test_receiver_alone_matches_transformers_question_by_question(models):
  lm, hf = models
  questions = load_mmlu_redux(limit=N, seed=0)
  assert len(questions) == N and all(len(q.choices) == 4 for q in questions)
  evaluator = Evaluator(Settings(progress=False, warmup=False))
  preds = evaluator.evaluate(System("receiver", Solo(lm)), questions, ("logits", "cloze"))
  scores = {m: np.array([p.scores for p in preds if p.method == m])
            for m in ("logits", "cloze", "cloze_norm")}
  _check(scores["logits"], _hf_letter_scores(hf, lm.tokenizer, questions), "logits")
  ref = _hf_cloze_scores(hf, lm.tokenizer, questions)
  _check(scores["cloze"], ref, "cloze")
  chars = np.array([[len(o) for o in cloze_prompt(q)[1]] for q in questions])
  _check(scores["cloze_norm"], ref / chars, "cloze_norm")
  for m in scores:  # picks are the argmax of the scores, correctness against the gold answer
    picks = [p for p in preds if p.method == m]
    assert [p.pred for p in picks] == list(scores[m].argmax(1))
    assert all(p.answer == q.answer for p, q in zip(picks, questions))
