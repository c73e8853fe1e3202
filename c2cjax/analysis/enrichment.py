"""Cache enrichment (the paper's oracle, Fu et al. Sec. 3): does a richer cache of the same
length help the receiver?

Per question, three prompts end in the same question turn:
  direct    the zero-shot MCQ prompt (``evaluation.prompts.mcq_prompt``);
  few-shot  ``shots`` solved exemplars (other questions of the benchmark) before it;
  oracle    the few-shot prefill with the exemplars' slots dropped: the question's tokens
            keep the keys/values they got while attending to the exemplars, in a cache as
            long as the direct one (their RoPE phases stay those of the few-shot prompt,
            as in the paper).
Layer-wise enrichment takes the direct cache and swaps in the oracle's keys/values at one
layer (or one group of layers) only. Every variant is scored with letter logits after the
prompt's last token; besides accuracy we report the mean probability of the gold letter
(softmax over the option letters), which moves long before accuracy does on small models.

Token layout: the few-shot text is ``head + exemplars + tail`` and the direct text ``head +
tail`` (head: the common prefix up to its last newline); the three pieces are tokenised
separately, so both prompts share the head's and the tail's ids exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from c2cjax.analysis import caches
from c2cjax.evaluation.answerers import letter_token_ids
from c2cjax.evaluation import prompts as prompts_lib
from c2cjax.evaluation.datasets import Question
from c2cjax.models.lm import LM


@dataclasses.dataclass(frozen=True)
class Prompts:
  """Ids of one question's direct and few-shot prompts: head + [exemplars] + tail."""
  head: np.ndarray
  shots: np.ndarray
  tail: np.ndarray

  @property
  def direct(self) -> np.ndarray:
    return np.concatenate([self.head, self.tail])

  @property
  def few_shot(self) -> np.ndarray:
    return np.concatenate([self.head, self.shots, self.tail])


def _user(q: Question, cfg: prompts_lib.PromptConfig) -> str:
  return cfg.mcq.format(question=q.question, options=prompts_lib.format_options(q.choices),
                        letters="/".join(prompts_lib.letters(len(q.choices))))


def texts(q: Question, exemplars: Sequence[Question], tokenizer,
          cfg: prompts_lib.PromptConfig = prompts_lib.DEFAULT) -> tuple[str, str]:
  """(direct, few-shot) prompt texts; exemplars are solved chat turns ("The correct answer
  is X", as the MCQ prompt asks), or "Answer: X" blocks for base models."""
  if prompts_lib.has_chat_template(tokenizer):
    turns = []
    for e in exemplars:
      turns += [{"role": "user", "content": _user(e, cfg)},
                {"role": "assistant", "content": f"The correct answer is {e.answer_letter}"}]
    if cfg.system is not None:
      turns.insert(0, {"role": "system", "content": cfg.system})
    render = lambda m: tokenizer.apply_chat_template(m, add_generation_prompt=True,
                                                     tokenize=False)
    last = [{"role": "user", "content": _user(q, cfg)}]
    return render(turns[:1 if cfg.system is not None else 0] + last), render(turns + last)
  shots = "".join(prompts_lib.mcq_prompt(e, None, cfg) + f" {e.answer_letter}\n\n"
                  for e in exemplars)
  direct = prompts_lib.mcq_prompt(q, None, cfg)
  return direct, shots + direct


def split_prompts(direct: str, few_shot: str, tokenizer) -> Prompts:
  """Tokenises ``direct = head + tail`` and ``few_shot = head + shots + tail``."""
  n = 0
  while n < min(len(direct), len(few_shot)) and direct[n] == few_shot[n]:
    n += 1
  head_len = direct.rfind("\n", 0, n) + 1  # snap to a line start (0: no common line)
  tail = direct[head_len:]
  if not few_shot.endswith(tail) or len(few_shot) - len(tail) < head_len:
    raise ValueError("the few-shot prompt does not end with the direct prompt's question turn")
  shots = few_shot[head_len:len(few_shot) - len(tail)]
  special = not prompts_lib.has_chat_template(tokenizer)
  enc = lambda t, s: np.asarray(tokenizer(t, add_special_tokens=s)["input_ids"], np.int32)
  head = enc(direct[:head_len], special) if head_len else np.zeros(0, np.int32)
  if not head_len and special:  # BOS belongs to the head even when no text does
    head = enc("", True)
  return Prompts(head, enc(shots, False), enc(tail, False))


def default_groups(num_layers: int, n: int = 4) -> dict[str, list[int]]:
  """``n`` contiguous layer groups (shallow to deep) and all layers."""
  bounds = np.linspace(0, num_layers, n + 1).round().astype(int)
  out = {f"layers {a}-{b - 1}": list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:])
         if b > a}
  out["all"] = list(range(num_layers))
  return out


def _probs(scores: np.ndarray) -> np.ndarray:
  e = np.exp(scores - scores.max())
  return e / e.sum()


def run(lm: LM, questions: Sequence[Question], exemplars: Sequence[Question], *,
        cfg: prompts_lib.PromptConfig = prompts_lib.DEFAULT, layers: bool = True,
        groups: dict[str, list[int]] | None = None, progress=None) -> dict:
  """Direct, few-shot, oracle and layer-wise enrichment over ``questions``.

  Returns:
    ``{"n", "shots", "variants": {name: {"accuracy", "gold_prob"}}, "single_layers":
    [{"layer", "accuracy", "gold_prob"}], "groups": {...}}``; "oracle" equals "all" of the
    groups (checked in the tests).
  """
  if not questions or not exemplars:
    raise ValueError("enrichment needs questions and at least one exemplar")
  ids = letter_token_ids(lm.tokenizer, max(len(q.choices) for q in questions))
  num_layers = lm.config.num_layers
  groups = default_groups(num_layers) if groups is None else groups
  variants = ["direct", "few_shot", "oracle"]
  per_layer = list(range(num_layers)) if layers else []
  hits = {k: [] for k in variants + [f"layer {i}" for i in per_layer] + list(groups)}
  gold = {k: [] for k in hits}
  for q in (progress(questions) if progress else questions):
    p = split_prompts(*texts(q, exemplars, lm.tokenizer, cfg), lm.tokenizer)
    direct, few = p.direct, p.few_shot
    d_cache = caches.prefill(lm, direct[:-1])
    f_cache = caches.prefill(lm, few[:-1])
    f_slots = caches.real_slots(f_cache)
    keep = np.concatenate([f_slots[:len(p.head)],
                           f_slots[len(p.head) + len(p.shots):]])  # drop the exemplars
    scored = {"direct": (d_cache, direct[-1]), "few_shot": (f_cache, few[-1]),
              "oracle": (caches.with_slots(d_cache, f_cache, keep), direct[-1])}
    for i in per_layer:
      scored[f"layer {i}"] = (caches.with_slots(d_cache, f_cache, keep, [i]), direct[-1])
    for name, g in groups.items():
      scored[name] = (caches.with_slots(d_cache, f_cache, keep, g), direct[-1])
    n = len(q.choices)
    for name, (cache, last) in scored.items():
      s = caches.letter_scores(caches.next_logits(lm, cache, int(last)), ids)[:n]
      hits[name].append(int(np.argmax(s)) == q.answer)
      gold[name].append(float(_probs(s)[q.answer]))
  summary = lambda k: {"accuracy": float(np.mean(hits[k])), "gold_prob": float(np.mean(gold[k]))}
  return {
      "n": len(questions), "shots": len(exemplars), "num_layers": num_layers,
      "variants": {k: summary(k) for k in variants},
      "single_layers": [{"layer": i, **summary(f"layer {i}")} for i in per_layer],
      "groups": {k: {"layers": v, **summary(k)} for k, v in groups.items()},
  }
