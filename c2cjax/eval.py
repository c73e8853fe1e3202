"""Multiple-choice evaluation of receiver, sharer, text-to-text (T2T) and C2C systems.

  python -m c2cjax.eval --config configs/eval_local.py [--config.limit=50] \\
      [--config.benchmarks=arc_challenge,openbookqa] [--config.subjects=anatomy] \\
      [--config.methods=logits,cloze,generate] [--config.systems=receiver,c2c]

Systems (``System``): ``receiver`` and ``sharer`` answer alone; ``t2t``: the sharer first
writes a background for the question (``prompts.background_prompt``, greedy, a token budget)
and the receiver answers with it in its prompt (``t2t_receiver_prompt``); ``c2c``: the
receiver answers on its cache fused from the first sharer's; ``c2c_multi``: from all sharers.

Questions with a private document (``Question.context``, the ``synthetic_docs`` benchmark):
``receiver`` and ``c2c`` never show it to the receiver; ``receiver_doc`` / ``sharer_doc``
answer with it in their prompt (as a background, the upper bounds); the T2T writer reads it
before its background request; ``c2c``, ``c2c_self`` (the receiver model as its own sharer,
``config.self_fusers``) fuse from sharers that read it first (``C2C`` sharer context); and
``oracle`` is the training-free cache enrichment: the receiver prefills document + question
and keeps only the question's slots (same cache length as ``receiver``).

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
background's). Same config and seed twice -> the same predictions (greedy, argmax, fixed
batching); only times vary.

Outputs in ``{output_dir}/{name}/``: per method ``{method}.json|.md|_accuracy.png`` (via
``report.write_report``) and ``{method}_records.jsonl``, all predictions with scores and
replies in ``predictions.jsonl``, and the config in ``config.json``.

Long runs in parts: ``--config.shard=k/n`` evaluates every n-th question from the k-th (per
benchmark, after ``limit`` and ``subjects``), e.g. one shard per host or per session; then
``--config.merge=dir1,dir2,...`` (their ``{output_dir}/{name}`` folders) writes the reports of
all their predictions into this run's folder, without loading a model. Merging checks that
the parts ran the same models, fusers and prompts, and that no question is counted twice.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from c2cjax import align, fuse as fuse_lib, sharer_context
from c2cjax.c2c import C2C, Fuser
from c2cjax.evaluation import datasets, prompts, report
from c2cjax.evaluation.datasets import Question
from c2cjax.evaluation.parse import parse_answer
from c2cjax.models.cache import KVCache
from c2cjax.models.model import LM
from c2cjax.runtime import enable_compilation_cache

SYSTEMS = ("receiver", "sharer", "t2t", "c2c", "c2c_multi", "receiver_doc", "sharer_doc",
           "c2c_self", "oracle")
METHODS = ("logits", "cloze", "generate")
MULTI_SUBJECT = ("mmlu_redux", "ceval")

Encoded = tuple[np.ndarray, tuple[np.ndarray, ...]]  # receiver ids [P], sharer ids [P] each


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


def bucket(n: int, buckets: Sequence[int]) -> int:
  """The smallest bucket >= n; past the last bucket, the next multiple of it."""
  for b in buckets:
    if n <= b:
      return b
  return -(-n // buckets[-1]) * buckets[-1]


def letter_token_ids(tokenizer, n: int) -> list[list[int]]:
  """Per option letter "A".."", the ids of "X" and " X" that are a single token."""
  out = []
  for letter in prompts.letters(n):
    ids = []
    for text in (letter, " " + letter):
      enc = tokenizer.encode(text, add_special_tokens=False)
      if len(enc) == 1 and enc[0] not in ids:
        ids.append(int(enc[0]))
    if not ids:
      raise ValueError(f"neither {letter!r} nor ' {letter}' is a single token of {tokenizer}")
    out.append(ids)
  return out


def continuation_logprobs(lm: LM, params, last_logits: jax.Array, cache: KVCache,
                          cont: jax.Array) -> jax.Array:
  """Teacher-forced log-probs of O continuations per context, on copies of its cache.

  Args:
    lm: the model that continues (the receiver for C2C).
    last_logits: [B, V] logits after the context's last token.
    cache: the context's cache, B sequences, room for C - 1 more tokens.
    cont: [B, O, C] continuation ids (right-padded).
  Returns:
    [B, O, C] float32, ``log p(cont[b, o, c] | context b, cont[b, o, :c])``.
  """
  b, o, c = cont.shape
  cache = cache.replace(k=jnp.repeat(cache.k, o, axis=1), v=jnp.repeat(cache.v, o, axis=1),
                        start=jnp.repeat(cache.start, o))
  flat = cont.reshape(b * o, c)

  def logprob(logits, ids):  # gather minus logsumexp: no second [.., V] buffer
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, ids[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)

  first = logprob(jnp.repeat(last_logits, o, axis=0), flat[:, 0])[:, None]  # [BO, 1]
  if c == 1:
    return first.reshape(b, o, 1)
  logits, _ = lm.module_apply(params, flat[:, :-1], cache)
  rest = logprob(logits, flat[:, 1:])  # [BO, C - 1]
  return jnp.concatenate([first, rest], axis=1).reshape(b, o, c)


@functools.lru_cache(maxsize=16)
def _continuation_fn(lm: LM):
  """One jitted :func:`continuation_logprobs` per model, shared by Solo and Fused."""
  return jax.jit(functools.partial(continuation_logprobs, lm))


class Solo:
  """One LM answering alone (the receiver or sharer system, both sides of T2T)."""

  def __init__(self, lm: LM):
    self.lm = lm
    self._prefill = jax.jit(self._prefill_impl, static_argnames=("max_len",))

  @property
  def tokenizer(self):
    return self.lm.tokenizer

  def encode(self, text: str, special: bool, context: str = "") -> Encoded:
    del context
    return align.encode(self.lm.tokenizer, text, special)[0], ()

  def _prefill_impl(self, params, tokens, mask, max_len):
    # Same structure as C2C's prefill (all tokens but the last, then the last), so C2C
    # with closed gates reproduces these numbers exactly.
    b, s = tokens.shape
    lm = self.lm
    cache = lm.module_prefill(params, tokens[:, :-1], lm.init_cache(b, s - 1), mask[:, :-1])
    logits, cache = lm.module_apply(params, tokens[:, -1:], cache.pad_to(max_len))
    return logits[:, -1], cache

  def prefill(self, tokens, mask, sharer_tokens, max_len: int):
    """Logits [B, V] after left-padded ``tokens`` [B, P] and the cache (max_len slots)."""
    del sharer_tokens
    return self._prefill(self.lm.params, jnp.asarray(tokens), jnp.asarray(mask), max_len)

  def score(self, last_logits, cache, cont):
    return _continuation_fn(self.lm)(self.lm.params, last_logits, cache, jnp.asarray(cont))

  def generate(self, tokens, mask, sharer_tokens, max_new_tokens: int, eos_ids=None):
    """Greedy tokens [B, N] and lengths [B] (EOS included)."""
    del sharer_tokens
    cfg = self.lm.sampling_config(max_new_tokens=max_new_tokens, eos_ids=eos_ids)
    # LM.generate pads prompts itself; _generate takes our bucketed arrays as they are.
    generate = self.lm._generate  # pylint: disable=protected-access
    return generate(self.lm.params, jnp.asarray(tokens), jnp.asarray(mask),
                    jax.random.PRNGKey(0), cfg, tokens.shape[1] + max_new_tokens - 1)

  def decode(self, out, lengths) -> list[str]:
    return self.lm.decode_texts(out, lengths, self.lm.sampling_config())


class Fused:
  """A C2C receiver answering on its cache fused from the sharers'."""

  def __init__(self, c2c: C2C):
    if any(a is None for a in c2c.aligners):
      raise ValueError("C2C evaluation needs tokenizers on the receiver and every sharer")
    self.c2c = c2c

  @property
  def tokenizer(self):
    return self.c2c.receiver.tokenizer

  def encode(self, text: str, special: bool, context: str = "") -> Encoded:
    """Receiver ids and per sharer its aligned ids, after ``context`` in its own tokens."""
    alignments = [a.align(text, special) for a in self.c2c.aligners]
    return alignments[0].receiver_ids, tuple(
        _with_context(a.sharer, context, x.sharer_ids)
        for a, x in zip(self.c2c.aligners, alignments))

  @property
  def pads(self) -> list[int]:
    return [a.sharer_pad_id for a in self.c2c.aligners]

  def prefill(self, tokens, mask, sharer_tokens, max_len: int):
    ids, masks = sharer_ids_and_masks(tokens, sharer_tokens, self.pads)
    return self.c2c.prefill(tokens, mask, ids, max_len=max_len, sharer_masks=masks)

  def score(self, last_logits, cache, cont):
    r = self.c2c.receiver
    return _continuation_fn(r)(r.params, last_logits, cache, jnp.asarray(cont))

  def generate(self, tokens, mask, sharer_tokens, max_new_tokens: int, eos_ids=None):
    ids, masks = sharer_ids_and_masks(tokens, sharer_tokens, self.pads)
    out, lengths, _ = self.c2c.generate_ids(tokens, mask, ids, max_new_tokens=max_new_tokens,
                                            eos_ids=eos_ids, sharer_masks=masks)
    return out, lengths

  def decode(self, out, lengths) -> list[str]:
    r = self.c2c.receiver
    return r.decode_texts(out, lengths, r.sampling_config())


def _with_context(tokenizer, context: str, ids: np.ndarray) -> np.ndarray:
  if not context:
    return np.asarray(ids, np.int32)
  ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
  return np.concatenate([np.asarray(ctx, np.int32), np.asarray(ids, np.int32)])


def sharer_ids_and_masks(tokens, sharer_tokens, pads):
  """``pad_left``'s sharer rows (-1 marks padding) -> ids and masks (None: no context)."""
  if all(s.shape[1] == tokens.shape[1] for s in sharer_tokens):
    return tuple(np.maximum(s, 0) for s in sharer_tokens), None
  return (tuple(np.where(s >= 0, s, p).astype(np.int32) for s, p in zip(sharer_tokens, pads)),
          tuple((s >= 0).astype(np.int32) for s in sharer_tokens))


class Enriched(Solo):
  """The training-free cache-enrichment oracle: the model prefills ``context + prompt`` and
  keeps only the prompt's slots (all but the last), then runs the last token on them, with
  the prompt's own positions (a cache as long as :class:`Solo`'s)."""

  def __init__(self, lm: LM):
    super().__init__(lm)
    self._enriched = jax.jit(self._enriched_impl, static_argnames=("max_len",))

  def encode(self, text: str, special: bool, context: str = "") -> Encoded:
    ids = align.encode(self.lm.tokenizer, text, special)[0]
    return ids, (_with_context(self.lm.tokenizer, context, ids),)

  def _enriched_impl(self, params, tokens, mask, ids, smask, max_len):
    lm, p = self.lm, tokens.shape[1]
    cache = sharer_context.prefill_slice(lm, params, ids[:, :-1], smask[:, :-1], p - 1)
    first = jnp.argmax(mask.astype(bool), axis=-1).astype(jnp.int32)
    cache = cache.replace(start=first).pad_to(max_len)
    logits, cache = lm.module_apply(params, tokens[:, -1:], cache)
    return logits[:, -1], cache

  def prefill(self, tokens, mask, sharer_tokens, max_len: int):
    pad = self.lm.config.pad_token_id or 0
    ids, masks = sharer_ids_and_masks(tokens, sharer_tokens, [pad])
    if masks is None:
      masks = (mask,)
    return self._enriched(self.lm.params, jnp.asarray(tokens), jnp.asarray(mask),
                          jnp.asarray(ids[0]), jnp.asarray(masks[0]), max_len=max_len)

  def generate(self, tokens, mask, sharer_tokens, max_new_tokens: int, eos_ids=None):
    raise NotImplementedError("the oracle scores prefill methods (logits, cloze) only")


Answerer = Solo | Fused


@dataclasses.dataclass(frozen=True, eq=False)
class System:
  """A named way to answer: ``answerer``, with ``writer`` writing backgrounds first (T2T)."""

  name: str
  answerer: Answerer
  writer: Solo | None = None
  document: str = ""  # "prompt": read Question.context in the prompt; "sharer": as context


def pad_left(rows: Sequence[Encoded], width: int, batch: int,
             buckets: Sequence[int] = (32,)):
  """Left-padded tokens, mask [batch, width] and sharer ids; missing rows repeat the last.

  Sharer rows longer than their receiver row (a context first) widen that sharer's array by
  a bucket of the longest extra, right-aligned; its padding is then -1 (a mask for
  :class:`Fused`, which turns it back into pad ids).
  """
  rows = list(rows) + [rows[-1]] * (batch - len(rows))
  tokens = np.zeros((batch, width), np.int32)
  mask = np.zeros_like(tokens)
  extra = [max(len(r[1][j]) - len(r[0]) for r in rows) for j in range(len(rows[0][1]))]
  sharer = tuple(np.full((batch, width + (bucket(e, buckets) if e else 0)), -1 if e else 0,
                         np.int32) for e in extra)
  for i, (ids, sids) in enumerate(rows):
    n = len(ids)
    tokens[i, width - n:], mask[i, width - n:] = ids, 1
    for j, s in enumerate(sids):
      sharer[j][i, sharer[j].shape[1] - len(s):] = s
  return tokens, mask, sharer


@dataclasses.dataclass(frozen=True)
class _Background:
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
    self._backgrounds: dict[tuple[int, str], _Background] = {}

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
  def backgrounds(self, writer: Solo, questions: Sequence[Question]) -> list[_Background]:
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
            lambda: writer.generate(tokens, mask, sharer, s.background_tokens))
        texts = writer.decode(out, lengths)
        for row, i in enumerate(idx):
          self._backgrounds[(id(writer), todo[i].id)] = _Background(
              texts[row], int(lengths[row]), secs / len(idx) + enc_s[i])
    return [self._backgrounds[(id(writer), q.id)] for q in questions]

  # --- methods ---------------------------------------------------------------------------------
  def letters(self, system: System, questions: Sequence[Question], bgs) -> list[Prediction]:
    s, a = self.settings, system.answerer
    texts = [prompts.mcq_prompt(q, a.tokenizer, s.prompts, None if bg is None else bg.text)
             for q, bg in zip(questions, bgs)]
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
    ctx_enc, conts, chars, enc_s = [], [], [], []
    for q, bg in zip(questions, bgs):
      start = time.perf_counter()
      ctx, options = prompts.cloze_prompt(q, s.prompts)
      chars.append(np.array([len(o) for o in options]))
      if bg is not None:
        ctx = s.prompts.plain_context.format(background=bg.text.strip(), prompt=ctx)
      ctx_enc.append(a.encode(ctx, True, q.context) if system.document == "sharer" else
                     a.encode(ctx, True))
      n = len(ctx_enc[-1][0])
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
      logp, secs = self._timed(
          ("cloze", id(a), width, c, n_opt, _widths(batch)),
          lambda: a.score(*a.prefill(*batch, max_len=width + c), cont))
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
    texts = [prompts.mcq_prompt(q, a.tokenizer, s.prompts, None if bg is None else bg.text)
             for q, bg in zip(questions, bgs)]
    enc, enc_s = self._encode_all(a, texts, not _has_chat(a.tokenizer),
                                  _contexts(system, questions))
    preds = [None] * len(questions)
    size = min(s.batch_size, len(questions))
    for idx in self._batches([len(e[0]) for e in enc], size, f"{system.name} generate"):
      width = bucket(max(len(enc[i][0]) for i in idx), s.buckets)
      batch = pad_left([enc[i] for i in idx], width, size, s.buckets)
      (out, lengths), secs = self._timed(("generate", id(a), width, _widths(batch)),
                                         lambda: a.generate(*batch, s.max_new_tokens))
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
      bgs = [_Background(q.context.strip(), 0, 0.0) if q.context else None for q in questions]
    else:
      bgs = [None] * len(questions)
    run = {"logits": self.letters, "cloze": self.cloze, "generate": self.generate}
    return [p for m in methods for p in run[m](system, questions, bgs)]


def _contexts(system: System, questions: Sequence[Question]) -> list[str] | None:
  """Per question the document its sharers read first, for ``document="sharer"`` systems."""
  return [q.context for q in questions] if system.document == "sharer" else None


def _widths(batch) -> tuple[int, ...]:
  return tuple(x.shape[1] for x in batch[2])


# --- building systems from a config --------------------------------------------------------
def default_config():
  """The fields every ``configs/eval_*.py`` starts from (lists: comma-separated strings)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from ml_collections import config_dict  # pylint: disable=import-outside-toplevel

  c = ml_collections.ConfigDict()
  c.name = "default"  # reports go to {output_dir}/{name}/
  c.output_dir = "outputs/eval"
  c.receiver = "Qwen/Qwen3-0.6B"  # c2cjax.models.load.resolve specs, as in training
  c.sharers = "Qwen/Qwen2.5-0.5B-Instruct"  # the first serves `sharer`, `t2t` and `c2c`
  c.fusers = "runs/default/fuser"  # one checkpoint per sharer (a multi-sharer one counts all)
  c.self_fusers = ""  # c2c_self: a fuser trained with the receiver as its own sharer
  c.random_fuser = False  # missing fuser: a fresh one with open gates (smoke runs only)
  c.dtype = "float32"
  c.seed = 0  # question selection; tiny:* models are built with the training seeds
  c.alignment = "first"
  c.fusion_mode = "parallel"

  c.benchmarks = "mmlu_redux,openbookqa,arc_challenge"
  c.subjects = ""  # for mmlu_redux / ceval; empty: all
  c.limit = config_dict.placeholder(int)  # questions per benchmark (seeded); None: all
  c.ceval_path = config_dict.placeholder(str)  # C-Eval directory; None: the HF hub
  c.shard = ""  # "k/n": every n-th question from the k-th (per benchmark); empty: all
  c.merge = ""  # comma-separated output folders of shards: merge their reports, run nothing
  c.methods = "logits"  # logits, cloze, generate
  c.systems = "receiver,sharer,t2t,c2c"  # + c2c_multi with several sharers

  s = Settings()
  c.batch_size = s.batch_size
  c.cloze_batch_size = s.cloze_batch_size
  c.buckets = s.buckets
  c.continuation_buckets = s.continuation_buckets
  c.max_new_tokens = s.max_new_tokens  # generate method
  c.background_tokens = s.background_tokens  # T2T background budget
  c.warmup = s.warmup  # time after compiling each shape
  c.progress = s.progress
  c.prompts = ml_collections.ConfigDict(dataclasses.asdict(s.prompts))
  c.prompts.system = config_dict.placeholder(str)
  return c


def open_gates(fuser: Fuser, logit: float = 1.0) -> Fuser:
  """The same fuser with every key/value gate open (smoke runs, latency: the cost is paid)."""
  params = dict(fuser.params)
  for k in ("key_gate_logit", "value_gate_logit"):
    params[k] = jnp.full_like(params[k], logit)
  return Fuser(params, fuser.config, fuser.layer_map)


def load_fusers(path, prune: bool = True) -> list[Fuser]:
  """The fuser(s) of a ``fuse.save`` checkpoint (several for a multi-sharer run).

  ``prune`` drops layer pairs whose gates are both closed: with inference's hard gates they
  are the identity, so answers are unchanged and C2C prefill gets cheaper.
  """
  params, config, layer_map, _ = fuse_lib.load(path)
  if not isinstance(config, tuple):
    params, config, layer_map = (params,), (config,), (layer_map,)
  fusers = [Fuser(p, c, m) for p, c, m in zip(params, config, layer_map)]
  return [f.pruned() for f in fusers] if prune else fusers


def _split(value) -> list[str]:
  if value is None:
    return []
  if isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  return [str(v) for v in value]


def settings_from_config(config) -> Settings:
  return Settings(
      batch_size=config.batch_size, cloze_batch_size=config.cloze_batch_size,
      buckets=tuple(config.buckets), continuation_buckets=tuple(config.continuation_buckets),
      max_new_tokens=config.max_new_tokens, background_tokens=config.background_tokens,
      warmup=config.warmup, progress=config.progress,
      prompts=prompts.PromptConfig(**config.prompts.to_dict()))


def build_systems(config, log: Callable[[str], None] = print) -> list[System]:
  """Loads the models and fusers the requested systems need (skipping C2C without one)."""
  from c2cjax.models.load import resolve  # pylint: disable=import-outside-toplevel

  names = _split(config.systems)
  unknown = set(names) - set(SYSTEMS)
  if unknown:
    raise ValueError(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
  dtype = jnp.dtype(config.dtype)
  receiver = resolve(config.receiver, dtype, seed=config.seed)
  specs = _split(config.sharers)
  if not specs and set(names) - {"receiver", "receiver_doc", "c2c_self", "oracle"}:
    raise ValueError(f"systems {names} need at least one sharer (config.sharers)")
  own = {"receiver", "receiver_doc", "c2c_self", "oracle"}  # the receiver model only
  want = len(specs) if "c2c_multi" in names else int(bool(set(names) - own))
  sharers = [resolve(s, dtype, seed=config.seed + 1 + i) for i, s in enumerate(specs[:want])]

  fusers: list[Fuser] | None = None
  if {"c2c", "c2c_multi"} & set(names):
    fusers, missing = [], []
    for path in _split(config.fusers):
      if pathlib.Path(path).exists():
        fusers += load_fusers(path)
      else:
        missing.append(path)
    if missing and config.random_fuser:
      log(f"fuser checkpoint(s) {missing} not found: using freshly initialised fusers with "
          "gates forced open (random_fuser=True, a smoke run; accuracy means nothing)")
      rng = jax.random.PRNGKey(config.seed)
      fusers = [open_gates(Fuser.init(receiver, s, jax.random.fold_in(rng, i)))
                for i, s in enumerate(sharers)]
    elif missing or not fusers:
      log(f"fuser checkpoint(s) {missing or '(none given)'} not found: skipping systems "
          f"{sorted({'c2c', 'c2c_multi'} & set(names))} (train one with `python -m "
          "c2cjax.train`, or pass --config.random_fuser=True for a smoke run)")
      fusers = None

  kw = dict(mode=config.fusion_mode, alignment=config.alignment)
  systems = []
  for name in names:
    if name == "receiver":
      systems.append(System(name, Solo(receiver)))
    elif name == "receiver_doc":
      systems.append(System(name, Solo(receiver), document="prompt"))
    elif name == "sharer_doc":
      systems.append(System(name, Solo(sharers[0]), document="prompt"))
    elif name == "oracle":
      systems.append(System(name, Enriched(receiver), document="sharer"))
    elif name == "c2c_self":
      paths = [p for p in _split(config.get("self_fusers", "")) if pathlib.Path(p).exists()]
      if not paths:
        log(f"self fuser {config.get('self_fusers')!r} not found: skipping c2c_self")
        continue
      systems.append(System(name, Fused(C2C(receiver, [receiver], load_fusers(paths[0])[:1],
                                            **kw)), document="sharer"))
    elif name == "sharer":
      systems.append(System(name, Solo(sharers[0])))
    elif name == "t2t":
      systems.append(System(name, Solo(receiver), writer=Solo(sharers[0])))
    elif name == "c2c" and fusers is not None:
      systems.append(System(name, Fused(C2C(receiver, sharers[:1], fusers[:1], **kw)),
                            document="sharer"))
    elif name == "c2c_multi" and fusers is not None:
      if len(sharers) < 2 or len(fusers) != len(sharers):
        log(f"c2c_multi needs >= 2 sharers and one fuser each ({len(sharers)} sharers, "
            f"{len(fusers)} fusers): skipped")
        continue
      systems.append(System(name, Fused(C2C(receiver, sharers, fusers, **kw))))
  # One Solo per model, so compiled shapes and T2T backgrounds are shared.
  by_lm: dict[int, Solo] = {}
  def share(s):
    return by_lm.setdefault(id(s.lm), s) if type(s) is Solo else s
  return [dataclasses.replace(s, answerer=share(s.answerer),
                              writer=None if s.writer is None else share(s.writer))
          for s in systems]


def parse_shard(shard: str | None) -> tuple[int, int]:
  """``"k/n"`` -> (k, n) with 0 <= k < n; empty -> (0, 1)."""
  if not shard:
    return 0, 1
  try:
    k, n = (int(x) for x in str(shard).split("/"))
  except ValueError:
    k = n = -1
  if not 0 <= k < n:
    raise ValueError(f"shard must be 'k/n' with 0 <= k < n (e.g. '0/4'), got {shard!r}")
  return k, n


def load_questions(config, log: Callable[[str], None] = print) -> dict[str, list[Question]]:
  """Benchmark name -> questions (limit, seed; subjects for multi-subject benchmarks;
  ``shard``)."""
  subjects = _split(config.subjects) or None
  k, n = parse_shard(config.get("shard"))
  out = {}
  for name in _split(config.benchmarks):
    kw = dict(limit=config.limit, seed=config.seed)
    if name in MULTI_SUBJECT:
      kw["subjects"] = subjects
    if name == "ceval":
      if config.ceval_path:
        kw["path"] = config.ceval_path
      else:
        kw["source"] = "hub"
      try:
        out[name] = datasets.load_ceval(**kw)
      except (datasets.HubError, FileNotFoundError) as e:
        log(f"C-Eval unavailable ({e}); set --config.ceval_path: skipped")
      continue
    out[name] = datasets.load_benchmark(name, **kw)
  return {name: qs[k::n] for name, qs in out.items()}


def _write_reports(records: dict[str, list[report.Record]], prediction_lines: Sequence[str],
                   out_dir) -> dict[str, pathlib.Path]:
  """Per method its report and records, and ``predictions.jsonl`` (JSON lines) in ``out_dir``."""
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {}
  for method, recs in records.items():
    paths.update({f"{method}.{k}": v for k, v in
                  report.write_report(recs, out, name=method).items()})
    paths[f"{method}.records"] = out / f"{method}_records.jsonl"
    report.save_records(recs, paths[f"{method}.records"])
  paths["predictions"] = out / "predictions.jsonl"
  paths["predictions"].write_text("".join(prediction_lines), encoding="utf-8")
  return paths


def write_outputs(predictions: Sequence[Prediction], questions: dict[str, list[Question]],
                  out_dir, config=None) -> dict[str, pathlib.Path]:
  """Reports per method, records, predictions and the config under ``out_dir``."""
  by_id = {q.id: q for qs in questions.values() for q in qs}
  records: dict[str, list[report.Record]] = {}
  for p in predictions:
    records.setdefault(p.method, []).append(p.record(by_id[p.question_id]))
  lines = [json.dumps(dataclasses.asdict(p), ensure_ascii=False) + "\n" for p in predictions]
  paths = _write_reports(records, lines, out_dir)
  if config is not None:
    paths["config"] = pathlib.Path(out_dir) / "config.json"
    paths["config"].write_text(config.to_json_best_effort(indent=2) + "\n")
  return paths


# Config fields that may differ between the parts of one merged evaluation.
_PART_FIELDS = ("name", "output_dir", "benchmarks", "subjects", "limit", "shard", "merge",
                "systems", "methods", "batch_size", "cloze_batch_size", "warmup", "progress",
                "ceval_path")


def merge(parts: Sequence[str | pathlib.Path], out_dir) -> dict[str, pathlib.Path]:
  """Reports of all predictions of several runs' output folders (shards), in ``out_dir``.

  Raises:
    FileNotFoundError: a folder without ``config.json`` / ``predictions.jsonl``.
    ValueError: parts with different models, fusers or prompts (the field is named), or a
      (benchmark, system, method, question) present in two parts.
  """
  if not parts:
    raise ValueError("merge needs at least one output folder")
  configs, predictions, records = [], [], {}
  seen: dict[tuple, pathlib.Path] = {}
  for part in map(pathlib.Path, parts):
    for f in ("config.json", "predictions.jsonl"):
      if not (part / f).is_file():
        raise FileNotFoundError(f"{part / f} not found: is {part} an evaluation's output "
                                "folder ({output_dir}/{name})?")
    config = json.loads((part / "config.json").read_text())
    if configs:
      first, first_path = configs[0]
      for key in sorted(set(first) | set(config)):
        if key not in _PART_FIELDS and first.get(key) != config.get(key):
          raise ValueError(f"cannot merge {part} with {first_path}: their runs differ in "
                           f"{key!r} ({config.get(key)!r} vs {first.get(key)!r})")
    configs.append((config, part))
    with open(part / "predictions.jsonl", encoding="utf-8") as f:
      predictions += [line.rstrip("\n") + "\n" for line in f if line.strip()]
    for file in sorted(part.glob("*_records.jsonl")):
      method = file.name[:-len("_records.jsonl")]
      for r in report.load_records(file):
        key = (r.benchmark, r.system, method, r.question_id)
        if key in seen:
          raise ValueError(f"{key} is in both {seen[key]} and {part}: overlapping parts")
        seen[key] = part
        records.setdefault(method, []).append(r)
  paths = _write_reports(records, predictions, out_dir)
  # The first part's config, naming the parts, so a merged folder can be merged again.
  config = dict(configs[0][0], shard="", merge=",".join(str(p) for _, p in configs))
  paths["config"] = pathlib.Path(out_dir) / "config.json"
  paths["config"].write_text(json.dumps(config, indent=2) + "\n")
  return paths


def _log_reports(paths: dict[str, pathlib.Path], log: Callable[[str], None]) -> None:
  for key in (k for k in paths if k.endswith(".markdown")):
    log(f"\n# {key[:-len('.markdown')]}\n\n" + paths[key].read_text())


def run(config, log: Callable[[str], None] = print) -> dict[str, pathlib.Path]:
  """Loads everything ``config`` names, evaluates and writes ``{output_dir}/{name}/``
  (with ``config.merge``: only merges those folders' reports there)."""
  out_dir = pathlib.Path(config.output_dir) / config.name
  if config.get("merge"):
    paths = merge(_split(config.merge), out_dir)
    _log_reports(paths, log)
    log(f"merged reports in {out_dir}")
    return paths
  methods = _split(config.methods)
  if set(methods) - set(METHODS):
    raise ValueError(f"unknown methods {methods}; choose from {METHODS}")
  questions = load_questions(config, log)
  systems = build_systems(config, log)
  evaluator = Evaluator(settings_from_config(config))
  predictions = []
  for bench, qs in questions.items():
    for system in systems:
      log(f"{bench}: {system.name} on {len(qs)} questions ({', '.join(methods)})")
      predictions += evaluator.evaluate(system, qs, methods)
  paths = write_outputs(predictions, questions, out_dir, config)
  _log_reports(paths, log)
  log(f"reports in {out_dir}")
  return paths


def main(argv):
  del argv
  from absl import flags, logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file at INFO
  enable_compilation_cache()  # the next shard or run loads its compiled shapes
  run(flags.FLAGS.config)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file("config", None, "evaluation config file", lock_config=True)
  flags.mark_flags_as_required(["config"])
  app.run(main)
