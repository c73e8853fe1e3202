"""Where the answer is: linear probes of a model's cache slot on the private-document task.

C2C fuses the sharer's cache slots aligned to the receiver's prompt; on the synthetic task
(:mod:`c2cjax.data.synthetic`) the answer lives in the document, which only the sharer reads.
The question this analysis answers: after reading the document, does the slot C2C fuses last
(the reply prefix's ":", where the model is about to answer) carry the answer in a linearly
readable form, layer by layer? If it does, a fuser has something to carry; if not even a
probe trained on the answers finds it, no fuser over those slots can.

Per example the model reads ``[document] + the receiver's chat-rendered question + "The
answer is:"`` (the sequence C2C's sharer reads; ``document=False``: without the document, the
control). Features per layer: the key and value of the last slot, heads flattened. A ridge
probe (closed form; numpy) maps them to the value's one-hot over the attribute vocabularies
with a closed list (colour, pet, instrument, profession), trained on the ``train`` split and
scored on held-out questions like the cloze evaluation: the option with the highest probe
score among the question's four (chance 25%).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from c2cjax import align
from c2cjax.analysis import caches
from c2cjax.data import synthetic
from c2cjax.models.lm import LM

LAMBDAS = (1.0, 10.0, 100.0, 1000.0)


def closed_questions(split: str, limit: int, seed: int = 0):
  """Up to ``limit`` (document, QA) pairs of ``split`` whose attribute has a closed value
  list, in a seeded order."""
  items = [(d, qa) for d, qa in synthetic.questions(split)
           if synthetic.ATTRIBUTES[qa.attribute][2] is not None]
  order = np.random.default_rng(seed).permutation(len(items))[:limit]
  return [items[i] for i in sorted(order)]


def classes() -> tuple[str, ...]:
  """Every closed value, attribute by attribute (the probe's outputs)."""
  return tuple(f"{a}:{v}" for a, (_, _, vals) in synthetic.ATTRIBUTES.items()
               if vals is not None for v in vals)


def last_slot_features(lm: LM, template: str, items, document: bool,
                       progress: Callable | None = None) -> np.ndarray:
  """[N, L, 2 * K * H] float32: key and value of the last slot per layer, per example."""
  out = []
  for doc, qa in (progress or (lambda x: x))(items):
    prompt = template.format(question=qa.question) + synthetic.SHORT_PREFIX
    ids = align.encode(lm.tokenizer, prompt, True)[0]
    if document:
      ctx = lm.tokenizer(synthetic.context_text(doc), add_special_tokens=True)["input_ids"]
      ids = np.concatenate([np.asarray(ctx, np.int32), np.asarray(ids, np.int32)])
    k, v = caches.token_vectors(caches.prefill(lm, ids))
    out.append(np.concatenate([k[:, -1], v[:, -1]], axis=-1))
  return np.stack(out).astype(np.float32)


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                num_classes: int, lam: float) -> np.ndarray:
  """Scores [N_test, C] of a ridge regression onto one-hot labels (features standardised
  with the training statistics; an intercept)."""
  mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
  a = np.concatenate([(x_train - mu) / sd, np.ones((len(x_train), 1))], axis=1)
  b = np.concatenate([(x_test - mu) / sd, np.ones((len(x_test), 1))], axis=1)
  y = np.eye(num_classes)[y_train]
  if a.shape[1] <= a.shape[0]:
    return b @ np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ y)
  # More features than examples: the same solution in its dual form (an N x N system).
  return b @ (a.T @ np.linalg.solve(a @ a.T + lam * np.eye(a.shape[0]), y))


def option_accuracy(scores: np.ndarray, options: np.ndarray, answers: np.ndarray) -> float:
  """Fraction of rows whose highest-scoring option (``options [N, 4]`` class ids) is the
  answer (``answers [N]``, an index into the options)."""
  picked = np.take_along_axis(scores, options, axis=1).argmax(1)
  return float((picked == answers).mean())


def fit_layer(x_train, y_train, opt_train, ans_train, x_test, y_test, opt_test, ans_test,
              num_classes: int) -> dict:
  """The ridge strength chosen on the last fifth of the training set, then refit on all of
  it and scored on the test set."""
  cut = max(1, len(x_train) * 4 // 5)
  val = {lam: option_accuracy(ridge_probe(x_train[:cut], y_train[:cut], x_train[cut:],
                                          num_classes, lam), opt_train[cut:], ans_train[cut:])
         for lam in LAMBDAS}
  lam = max(val, key=val.get)
  scores = ridge_probe(x_train, y_train, x_test, num_classes, lam)
  return {"accuracy": option_accuracy(scores, opt_test, ans_test), "lambda": lam,
          "train_fit": option_accuracy(ridge_probe(x_train, y_train, x_train, num_classes, lam),
                                       opt_train, ans_train),
          "top1": float((scores.argmax(1) == y_test).mean())}


def labels(items) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Class ids of the answers [N], of each question's options [N, 4], answer indices [N]."""
  index = {c: i for i, c in enumerate(classes())}
  y = np.array([index[f"{qa.attribute}:{qa.answer_text}"] for _, qa in items])
  opts = np.array([[index[f"{qa.attribute}:{c}"] for c in qa.choices] for _, qa in items])
  return y, opts, np.array([qa.answer for _, qa in items])


def run(models: dict[str, LM], template: str, train: int, test: int, seed: int = 0,
        progress: Callable | None = None) -> dict:
  """Per model (name -> LM; each reads the same text) and with / without the document:
  probe accuracy per layer and on all layers' features concatenated."""
  train_items = closed_questions("train", train, seed)
  test_items = closed_questions("heldout", test, seed)
  y_tr, o_tr, a_tr = labels(train_items)
  y_te, o_te, a_te = labels(test_items)
  n = len(classes())
  out = {"train": len(train_items), "test": len(test_items), "classes": n, "variants": {}}
  for name, lm in models.items():
    for document in (True, False):
      x_tr = last_slot_features(lm, template, train_items, document, progress)
      x_te = last_slot_features(lm, template, test_items, document, progress)
      layers = [fit_layer(x_tr[:, l], y_tr, o_tr, a_tr, x_te[:, l], y_te, o_te, a_te, n)
                for l in range(x_tr.shape[1])]
      flat = lambda x: x.reshape(len(x), -1)
      out["variants"][f"{name}{'' if document else '_no_document'}"] = {
          "layers": layers,
          "all_layers": fit_layer(flat(x_tr), y_tr, o_tr, a_tr, flat(x_te), y_te, o_te, a_te, n),
          "best_layer": int(np.argmax([r["accuracy"] for r in layers]))}
  return out


def summary(result: dict) -> Sequence[str]:
  """One line per variant: best layer and all layers."""
  lines = []
  for name, v in result["variants"].items():
    best = v["layers"][v["best_layer"]]
    lines.append(f"{name}: best layer {v['best_layer']} {best['accuracy']:.1%}, all layers "
                 f"{v['all_layers']['accuracy']:.1%} (test {result['test']}, chance 25%)")
  return lines
