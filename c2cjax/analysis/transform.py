"""Cache transformation (the paper's Sec. 3 feasibility check): can a small MLP map the
sharer's per-token keys/values to the receiver's on the same text?

Both models prefill the same texts (sharer ids aligned 1:1 to the receiver's tokens, as C2C
does); for one (receiver layer, sharer layer) pair every real token gives a source vector
(sharer keys or values, heads flattened) and a target vector (receiver's). A 3-layer MLP
(GELU, trained with optax Adam on standardised inputs and targets) learns source -> target on
the training texts; we report the held-out relative error ``MSE / Var(target)`` (the mean
predictor scores 1) beside a least-squares linear map, and embed source, target and
transformed held-out tokens in 2-D (t-SNE when scikit-learn is installed, else PCA).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from c2cjax.analysis import caches
from c2cjax.models.lm import LM


class MLP(nn.Module):
  """``Dense(hidden) -> GELU -> Dense(hidden) -> GELU -> Dense(out)``."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Dense(self.hidden)(x))
    x = nn.gelu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.out)(x)


def collect(receiver: LM, sharer: LM, texts: Sequence[str], receiver_layer: int,
            sharer_layer: int) -> dict[str, np.ndarray]:
  """Per-token vectors of every text: ``{"source_k", "source_v", "target_k", "target_v":
  [N, D]}`` and ``"text" [N]`` (which text each token came from)."""
  out = {k: [] for k in ("source_k", "source_v", "target_k", "target_v", "text")}
  for i, t in enumerate(texts):
    rids, sids = caches.aligned_ids(receiver, sharer, t)
    rk, rv = caches.token_vectors(caches.prefill(receiver, rids))
    sk, sv = caches.token_vectors(caches.prefill(sharer, sids))
    out["target_k"].append(rk[receiver_layer])
    out["target_v"].append(rv[receiver_layer])
    out["source_k"].append(sk[sharer_layer])
    out["source_v"].append(sv[sharer_layer])
    out["text"].append(np.full(len(rids), i))
  return {k: np.concatenate(v) for k, v in out.items()}


def _standardise(x, mean, std):
  return (x - mean) / std


def fit(source: np.ndarray, target: np.ndarray, *, hidden: int = 256, steps: int = 500,
        lr: float = 1e-3, seed: int = 0) -> tuple[callable, list[float]]:
  """Trains the MLP full-batch; returns ``predict(source) -> target`` and the loss curve."""
  sm, ss = source.mean(0), source.std(0) + 1e-6
  tm, ts = target.mean(0), target.std(0) + 1e-6
  x = jnp.asarray(_standardise(source, sm, ss))
  y = jnp.asarray(_standardise(target, tm, ts))
  model = MLP(hidden, target.shape[1])
  params = model.init(jax.random.PRNGKey(seed), x[:1])
  tx = optax.adam(lr)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt):
    loss, g = jax.value_and_grad(lambda p: jnp.mean((model.apply(p, x) - y) ** 2))(params)
    updates, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  losses = []
  for _ in range(steps):
    params, opt, loss = step(params, opt)
    losses.append(float(loss))
  apply = jax.jit(model.apply)
  predict = lambda s: np.asarray(apply(params, jnp.asarray(_standardise(s, sm, ss)))) * ts + tm
  return predict, losses


def relative_error(pred: np.ndarray, target: np.ndarray) -> float:
  """MSE / total variance of the target (1.0 = predicting the mean)."""
  return float(np.mean((pred - target) ** 2) / np.mean((target - target.mean(0)) ** 2))


def linear_fit(source, target):
  """Least-squares affine map, as a baseline for the MLP."""
  a = np.concatenate([source, np.ones((len(source), 1))], 1)
  w, *_ = np.linalg.lstsq(a, target, rcond=None)
  return lambda s: np.concatenate([s, np.ones((len(s), 1))], 1) @ w


def embed_2d(points: Sequence[np.ndarray], seed: int = 0) -> tuple[list[np.ndarray], str]:
  """Joint 2-D embedding of several [N_i, D_i] sets (smaller D zero-padded after a PCA of
  the wider ones to the narrowest width). t-SNE when scikit-learn imports, else PCA."""
  width = min(p.shape[1] for p in points)
  reduced = [_pca(p, width) if p.shape[1] > width else p for p in points]
  x = np.concatenate(reduced)
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  try:
    from sklearn.manifold import TSNE  # pylint: disable=import-outside-toplevel
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    y = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    method = "t-SNE"
  except ImportError:
    y, method = _pca(x, 2), "PCA"
  bounds = np.cumsum([0] + [len(p) for p in points])
  return [y[a:b] for a, b in zip(bounds[:-1], bounds[1:])], method


def _pca(x: np.ndarray, k: int) -> np.ndarray:
  x = x - x.mean(0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return x @ vt[:k].T


def run(receiver: LM, sharer: LM, texts: Sequence[str], *, receiver_layer: int,
        sharer_layer: int, heldout_fraction: float = 0.25, hidden: int = 256,
        steps: int = 500, lr: float = 1e-3, embed_points: int = 300, seed: int = 0) -> dict:
  """Fits keys and values; held-out by text. Returns the numbers and the 2-D embeddings."""
  if len(texts) < 2:
    raise ValueError("cache transformation needs at least 2 texts (train and held-out)")
  data = collect(receiver, sharer, texts, receiver_layer, sharer_layer)
  n_held = min(max(1, round(len(texts) * heldout_fraction)), len(texts) - 1)
  held = data["text"] >= len(texts) - n_held
  out = {"receiver_layer": receiver_layer, "sharer_layer": sharer_layer, "texts": len(texts),
         "train_tokens": int((~held).sum()), "heldout_tokens": int(held.sum()),
         "mlp": {"hidden": hidden, "layers": 3, "steps": steps, "lr": lr}, "kv": {}}
  rng = np.random.default_rng(seed)
  for kv in ("k", "v"):
    s, t = data[f"source_{kv}"], data[f"target_{kv}"]
    predict, losses = fit(s[~held], t[~held], hidden=hidden, steps=steps, lr=lr, seed=seed)
    pred = predict(s[held])
    linear = linear_fit(s[~held], t[~held])(s[held])
    pick = rng.permutation(int(held.sum()))[:embed_points]
    emb, method = embed_2d([s[held][pick], t[held][pick], pred[pick]], seed)
    out["kv"][kv] = {
        "train_relative_error": relative_error(predict(s[~held]), t[~held]),
        "heldout_relative_error": relative_error(pred, t[held]),
        "heldout_linear_relative_error": relative_error(linear, t[held]),
        "loss_curve": losses[::max(1, steps // 50)],
        "embedding": {"method": method, "source": emb[0].tolist(), "target": emb[1].tolist(),
                      "transformed": emb[2].tolist()}}
  return out
