"""The evaluation loop: systems x questions x answer methods -> ``Prediction``s.

Answer methods:
  logits    (the paper's) the MCQ chat prompt, then the argmax over the option letters of
            the next-token logits. A letter's logit is the max over the ids of "A" and " A"
            (each variant that is one token; variants that are several tokens are skipped).
            C2C takes the logits of ``C2C.prefill`` (fused context, last token on it).
  cloze     lm-evaluation-harness log-likelihood: context "Question: ...\\nAnswer:" (T2T:
            with the background, ``PromptConfig.plain_context``), continuation " {option}"
            (tokenised with the tokenizer's special tokens); ``cloze`` picks the largest
            summed log-prob (acc), ``cloze_norm`` the largest per character (acc_norm). The
            continuation ids are those of context + option past the context's own ids, as
            the harness does. The context's (fused) cache is computed once and every option
            is scored, batched and teacher-forced, on copies of it.
  generate  greedy decoding of the MCQ prompt, then ``parse_answer``; an unparsable reply
            counts as wrong and is reported as unparsable.

Batching: prompts are sorted by length (longest first), left-padded to a bucket length
(``Settings.buckets``) and grouped ``batch_size`` at a time (fewer questions: one batch of
them all); a short last batch repeats its last row, so shapes repeat and nothing recompiles
per question. With ``warmup`` (default), the first batch of every new shape runs once
untimed, so times exclude compilation.

Time per query: the tokenisation of the question plus its batch's wall time divided evenly
over the real questions in the batch (batched work is not attributed per row); ``cloze`` and
``cloze_norm`` share one measurement; T2T adds the question's share of the background
generation. Tokens generated: decoded tokens up to and including EOS (T2T adds the
background's). Same settings twice -> the same predictions (greedy, argmax, fixed
batching); only times vary.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any, Callable

import jax
import numpy as np
from tqdm import tqdm

from c2cjax import align
from c2cjax.evaluation import prompts, report
from c2cjax.evaluation.answerers import (Answerer, Fused, Solo, System, bucket,
                                         letter_token_ids, pad_left)
from c2cjax.evaluation.datasets import Question
from c2cjax.evaluation.parse import parse_answer

METHODS = ("logits", "cloze", "generate")


@dataclasses.dataclass(frozen=True)
class Settings:
  """How questions are batched, prompted and decoded.

  Attributes:
    batch_size: questions per batch (logits, generate, backgrounds).
    cloze_batch_size: questions per cloze batch (each brings all its options).
    buckets: prompt lengths to pad to (longer: multiples of the last).
    continuation_buckets: option lengths to pad to (cloze).
    max_new_tokens: budget of the ``generate`` method.
    background_tokens: budget of the T2T sharer's background.
    warmup: run each new shape once untimed first.
    progress: show tqdm bars.
    prompts: the prompt templates.
  """

  batch_size: int = 8
  cloze_batch_size: int = 4
  buckets: tuple[int, ...] = (32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768,
                               1024, 1280, 1536, 2048)
  continuation_buckets: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
  max_new_tokens: int = 64
  background_tokens: int = 64
  warmup: bool = True
  progress: bool = True
  prompts: prompts.PromptConfig = prompts.DEFAULT


@dataclasses.dataclass(frozen=True)
class Prediction:
  """One system's answer to one question under one method.

  Attributes:
    pred: chosen option index, None when a reply is unparsable.
    scores: per option: letter logit (logits), summed or per-character log-prob (cloze).
    reply: the decoded reply (generate).
    background: the sharer's background (T2T).
  """

  system: str
  method: str
  question_id: str
  pred: int | None
  answer: int
  time_s: float
  tokens_generated: int = 0
  scores: tuple[float, ...] = ()
  reply: str = ""
  background: str = ""

  def record(self, q: Question) -> report.Record:
    return report.Record(
        system=self.system, benchmark=q.benchmark, subject=q.subject, category=q.category,
        correct=self.pred == q.answer, parsed=self.pred is not None, time_s=self.time_s,
        tokens_generated=self.tokens_generated, question_id=q.id)


@dataclasses.dataclass(frozen=True)
class Background:
  """A T2T writer's background for one question, its tokens and its time share."""

  text: str
  tokens: int
  time_s: float


def _has_chat(tokenizer) -> bool:
  return prompts.has_chat_template(tokenizer)


class Evaluator:
  """Runs systems on questions; holds the set of compiled shapes (for warm-up)."""

  def __init__(self, settings: Settings = Settings()):
    self.settings = settings
    self._shapes: set = set()
    self._backgrounds: dict[tuple[int, str], Background] = {}

  # --- plumbing ------------------------------------------------------------------------------
  def _timed(self, key, fn: Callable[[], Any]):
    """(host result, seconds) of ``fn``; a new ``key`` first runs untimed with warm-up."""
    if self.settings.warmup and key not in self._shapes:
      jax.block_until_ready(fn())
    self._shapes.add(key)
    start = time.perf_counter()
    out = jax.tree.map(np.asarray, fn())
    return out, time.perf_counter() - start

  def _encode_all(self, answerer: Answerer, texts: Sequence[str], special: bool,
                  contexts: Sequence[str] | None = None):
    enc, secs = [], []
    for i, t in enumerate(texts):
      start = time.perf_counter()
      enc.append(answerer.encode(t, special, contexts[i]) if contexts else
                 answerer.encode(t, special))
      secs.append(time.perf_counter() - start)
    return enc, np.asarray(secs)

  def _batches(self, lengths: Sequence[int], size: int, desc: str):
    """Index batches, longest prompts first, with a progress bar advanced per batch."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bar = tqdm(total=len(order), desc=desc, leave=False, disable=not self.settings.progress)
    for i in range(0, len(order), size):
      idx = order[i:i + size]
      yield idx
      bar.update(len(idx))
    bar.close()

  # --- T2T backgrounds -----------------------------------------------------------------------
  def backgrounds(self, writer: Solo, questions: Sequence[Question]) -> list[Background]:
    """The writer's greedy background for each question (cached per writer and question)."""
    todo = [q for q in questions if (id(writer), q.id) not in self._backgrounds]
    if todo:
      s = self.settings
      texts = [q.context + prompts.background_prompt(q, writer.tokenizer, s.prompts)
               for q in todo]  # the writer reads a question's document first
      enc, enc_s = self._encode_all(writer, texts, not _has_chat(writer.tokenizer))
      size = min(s.batch_size, len(todo))
      for idx in self._batches([len(e[0]) for e in enc], size, "backgrounds"):
        tokens, mask, sharer = pad_left([enc[i] for i in idx], bucket(
            max(len(enc[i][0]) for i in idx), s.buckets), size)
        (out, lengths), secs = self._timed(
            ("bg", id(writer), tokens.shape),
            lambda: writer.generate(tokens, mask, sharer,
                                    max_new_tokens=s.background_tokens))
        texts = writer.decode(out, lengths)
        for row, i in enumerate(idx):
          self._backgrounds[(id(writer), todo[i].id)] = Background(
              texts[row], int(lengths[row]), secs / len(idx) + enc_s[i])
    return [self._backgrounds[(id(writer), q.id)] for q in questions]

  # --- methods ---------------------------------------------------------------------------------
  def _mcq_prompts(self, a: Answerer, questions: Sequence[Question], bgs) -> list:
    """Rendered MCQ prompts, or chat messages for answerers that render them (release)."""
    s = self.settings
    if getattr(a, "messages", False):
      return [prompts.mcq_messages(q, s.prompts, None if bg is None else bg.text)
              for q, bg in zip(questions, bgs)]
    return [prompts.mcq_prompt(q, a.tokenizer, s.prompts, None if bg is None else bg.text)
            for q, bg in zip(questions, bgs)]

  def letters(self, system: System, questions: Sequence[Question], bgs) -> list[Prediction]:
    s, a = self.settings, system.answerer
    texts = self._mcq_prompts(a, questions, bgs)
    enc, enc_s = self._encode_all(a, texts, not _has_chat(a.tokenizer),
                                  _contexts(system, questions))
    ids = letter_token_ids(a.tokenizer, max(len(q.choices) for q in questions))
    preds = [None] * len(questions)
    size = min(s.batch_size, len(questions))
    for idx in self._batches([len(e[0]) for e in enc], size, f"{system.name} logits"):
      width = bucket(max(len(enc[i][0]) for i in idx), s.buckets)
      batch = pad_left([enc[i] for i in idx], width, size, s.buckets)
      logits, secs = self._timed(("logits", id(a), width, _widths(batch)),
                                 lambda: a.prefill(*batch, max_len=width)[0])
      for row, i in enumerate(idx):
        q = questions[i]
        scores = [float(max(logits[row, t] for t in ids[k])) for k in range(len(q.choices))]
        preds[i] = self._pred(system, "logits", q, bgs[i], secs / len(idx) + enc_s[i],
                              int(np.argmax(scores)), scores=tuple(scores))
    return preds

  def cloze(self, system: System, questions: Sequence[Question], bgs) -> list[Prediction]:
    s, a = self.settings, system.answerer
    ctx_enc, conts, chars, enc_s, replies = [], [], [], [], []
    for q, bg in zip(questions, bgs):
      start = time.perf_counter()
      ctx, options = prompts.cloze_prompt(q, s.prompts)
      chars.append(np.array([len(o) for o in options]))
      if bg is not None:
        ctx = s.prompts.plain_context.format(background=bg.text.strip(), prompt=ctx)
      ctx_enc.append(a.encode(ctx, True, q.context) if system.document == "sharer" else
                     a.encode(ctx, True))
      n = len(ctx_enc[-1][0])
      replies.append(reply_tokens(a.tokenizer, ctx, ctx_enc[-1][0], s.prompts.reply_prefix)
                     if isinstance(a, Fused) else 0)
      conts.append([align.encode(a.tokenizer, ctx + o, True)[0][n:] for o in options])
      enc_s.append(time.perf_counter() - start)
    n_opt = max(len(q.choices) for q in questions)
    out = [[None, None] for _ in questions]
    size = min(s.cloze_batch_size, len(questions))
    for idx in self._batches([len(e[0]) for e in ctx_enc], size, f"{system.name} cloze"):
      width = bucket(max(len(ctx_enc[i][0]) for i in idx), s.buckets)
      c = bucket(max(max(len(x) for x in conts[i]) for i in idx), s.continuation_buckets)
      batch = pad_left([ctx_enc[i] for i in idx], width, size, s.buckets)
      cont = np.zeros((size, n_opt, c), np.int32)
      for row, i in enumerate(idx):
        for o, x in enumerate(conts[i]):
          cont[row, o, :len(x)] = x
      reply = {replies[i] for i in idx}
      if len(reply) != 1:
        raise ValueError(f"the reply prefix {s.prompts.reply_prefix!r} is {sorted(reply)} "
                         "tokens in different prompts of one batch; C2C reads it unfused and "
                         "needs one length")
      kw = {"reply": reply.pop()} if isinstance(a, Fused) else {}
      logp, secs = self._timed(
          ("cloze", id(a), width, c, n_opt, _widths(batch)),
          lambda: a.score(*a.prefill(*batch, max_len=width + c, **kw), cont))
      for row, i in enumerate(idx):
        q, t = questions[i], secs / len(idx) + enc_s[i]
        ll = np.array([logp[row, o, :len(x)].astype(np.float64).sum()
                       for o, x in enumerate(conts[i])])
        norm = ll / chars[i]
        out[i] = [self._pred(system, "cloze", q, bgs[i], t, int(np.argmax(ll)),
                             scores=tuple(ll.tolist())),
                  self._pred(system, "cloze_norm", q, bgs[i], t, int(np.argmax(norm)),
                             scores=tuple(norm.tolist()))]
    return [p for pair in out for p in pair]

  def generate(self, system: System, questions: Sequence[Question], bgs) -> list[Prediction]:
    s, a = self.settings, system.answerer
    texts = self._mcq_prompts(a, questions, bgs)
    enc, enc_s = self._encode_all(a, texts, not _has_chat(a.tokenizer),
                                  _contexts(system, questions))
    preds = [None] * len(questions)
    size = min(s.batch_size, len(questions))
    for idx in self._batches([len(e[0]) for e in enc], size, f"{system.name} generate"):
      width = bucket(max(len(enc[i][0]) for i in idx), s.buckets)
      batch = pad_left([enc[i] for i in idx], width, size, s.buckets)
      (out, lengths), secs = self._timed(("generate", id(a), width, _widths(batch)),
                                         lambda: a.generate(*batch,
                                                            max_new_tokens=s.max_new_tokens))
      replies = a.decode(out, lengths)
      for row, i in enumerate(idx):
        q = questions[i]
        preds[i] = self._pred(system, "generate", q, bgs[i], secs / len(idx) + enc_s[i],
                              parse_answer(replies[row], q.choices), reply=replies[row],
                              tokens=int(lengths[row]))
    return preds

  @staticmethod
  def _pred(system, method, q, bg, time_s, pred, *, scores=(), reply="", tokens=0):
    if bg is not None:
      time_s, tokens = time_s + bg.time_s, tokens + bg.tokens
    return Prediction(system.name, method, q.id, pred, q.answer, float(time_s), tokens,
                      scores, reply, "" if bg is None else bg.text)

  def evaluate(self, system: System, questions: Sequence[Question],
               methods: Sequence[str] = ("logits",)) -> list[Prediction]:
    """Predictions of ``system`` under each method (cloze gives cloze and cloze_norm)."""
    unknown = set(methods) - set(METHODS)
    if unknown:
      raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if not questions:
      return []
    if system.writer is not None:
      bgs = self.backgrounds(system.writer, questions)
    elif system.document == "prompt":  # the document as a background, free of cost
      bgs = [Background(q.context.strip(), 0, 0.0) if q.context else None for q in questions]
    else:
      bgs = [None] * len(questions)
    run = {"logits": self.letters, "cloze": self.cloze, "generate": self.generate}
    return [p for m in methods for p in run[m](system, questions, bgs)]


def _contexts(system: System, questions: Sequence[Question]) -> list[str] | None:
  """Per question the document its sharers read first, for ``document="sharer"`` systems."""
  return [q.context for q in questions] if system.document == "sharer" else None


def reply_tokens(tokenizer, context: str, ids, prefix: str) -> int:
  """How many of ``ids`` (``context`` encoded with special tokens) are the trailing
  ``prefix``; the context without it must encode to the ids before them."""
  if not prefix:
    return 0
  if not context.endswith(prefix):
    raise ValueError(f"the cloze context does not end with reply_prefix {prefix!r}")
  head = align.encode(tokenizer, context[:-len(prefix)], True)[0]
  n = len(ids) - len(head)
  if n <= 0 or list(ids[:len(head)]) != list(head):
    raise ValueError(f"reply_prefix {prefix!r} does not tokenise apart from the context "
                     "before it; C2C cannot read it unfused (change the prefix or template)")
  return n


def _widths(batch) -> tuple[int, ...]:
  return tuple(x.shape[1] for x in batch[2])
