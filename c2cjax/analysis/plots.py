"""PNG figures of the analyses, and the two that need no model: gate openness of a fuser
checkpoint and the training curves of a run (``metrics.jsonl``).

Every ``plot_*`` writes one PNG (matplotlib's Agg backend, no metadata) and returns its path.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from c2cjax import fuse as fuse_lib


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=110, metadata={"Software": None})
  _pyplot().close(fig)
  return path


# --- fuser checkpoint and training run ----------------------------------------------------
def gates(path) -> dict:
  """Per fused receiver layer of a ``fuse.save`` checkpoint: key/value gate logits and
  whether each gate is open (``logit > 0``, the inference rule)."""
  params, config, layer_map, meta = fuse_lib.load(path)
  if len(layer_map) != 1:
    raise ValueError(f"{path} holds {len(layer_map)} fusers; gates() reads one-sharer checkpoints")
  (params,), (config,), (layer_map,) = params, config, layer_map
  k = np.asarray(params["key_gate_logit"], np.float64)
  v = np.asarray(params["value_gate_logit"], np.float64)
  rows = [{"receiver_layer": r, "sharer_layer": s, "key_logit": float(a), "value_logit": float(b),
           "key_open": bool(a > 0), "value_open": bool(b > 0)}
          for (r, s), a, b in zip(layer_map.pairs(), k, v)]
  openness = {kk: float(vv) for kk, vv in fuse_lib.gate_openness(params).items()}
  return {"checkpoint": str(path), "meta": meta, "pairs": rows, "open_fraction": openness,
          "hidden_dim": config.hidden_dim}


def plot_gates(result: dict, path) -> pathlib.Path:
  plt = _pyplot()
  rows = result["pairs"]
  x = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(rows) + 2), 3.6))
  ax.bar(x - 0.2, [r["key_logit"] for r in rows], 0.4, label="key gate logit")
  ax.bar(x + 0.2, [r["value_logit"] for r in rows], 0.4, label="value gate logit")
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xticks(x, [f"{r['receiver_layer']}<-{r['sharer_layer']}" for r in rows], rotation=90,
                fontsize=7)
  ax.set_xlabel("receiver layer <- sharer layer (open above 0)")
  f = result["open_fraction"]
  ax.set_title(f"gates open: key {f['key']:.0%}, value {f['value']:.0%}")
  ax.legend(fontsize=8)
  return _save(fig, path)


def read_metrics(path) -> list[dict]:
  """The JSON lines of a run's ``metrics.jsonl`` (a run directory or the file)."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / "metrics.jsonl"
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: give a training run's workdir or metrics.jsonl")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def curves(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
  """metric -> [(step, value)] (a resumed run's repeated steps keep the last value)."""
  out: dict[str, dict[int, float]] = {}
  for r in rows:
    for k, v in r.items():
      if k != "step" and isinstance(v, (int, float)):
        out.setdefault(k, {})[int(r["step"])] = float(v)
  return {k: sorted(v.items()) for k, v in sorted(out.items())}


_PANELS = (("loss (nats/token)", ("train/loss", "eval/c2c_loss", "eval/receiver_loss")),
           ("gates open", ("train/gate_open",)), ("gate temperature", ("train/temperature",)),
           ("learning rate", ("train/lr",)))


def plot_curves(series: dict, path, title: str = "") -> pathlib.Path:
  plt = _pyplot()
  fig, axes = plt.subplots(2, 2, figsize=(9, 6))
  for ax, (label, keys) in zip(axes.flat, _PANELS):
    for k in keys:
      if k in series:
        steps, values = zip(*series[k])
        ax.plot(steps, values, marker="o" if len(steps) < 10 else None, ms=3, label=k)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    if label.startswith("gate temperature") and ax.lines:
      ax.set_yscale("log")
    if ax.lines:
      ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


# --- model analyses ------------------------------------------------------------------------
def plot_enrichment(result: dict, path) -> pathlib.Path:
  plt = _pyplot()
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2]})
  names = list(result["variants"]) + list(result["groups"])
  vals = [result["variants"].get(n, result["groups"].get(n))["gold_prob"] for n in names]
  accs = [result["variants"].get(n, result["groups"].get(n))["accuracy"] for n in names]
  a1.barh(names, vals, color=["C0", "C1", "C2"] + ["C7"] * len(result["groups"]))
  for y, (v, acc) in enumerate(zip(vals, accs)):
    a1.text(v, y, f" acc {acc:.0%}", va="center", fontsize=7)
  a1.invert_yaxis()
  a1.set_xlabel("mean P(gold letter)")
  a1.set_title(f"{result['n']} questions, {result['shots']} shots")
  rows = result["single_layers"]
  if rows:
    a2.plot([r["layer"] for r in rows], [r["gold_prob"] for r in rows], "o-", ms=3,
            label="oracle slice at one layer")
  for name, style in (("direct", "--"), ("oracle", ":")):
    a2.axhline(result["variants"][name]["gold_prob"], ls=style, color="k", label=name)
  a2.set_xlabel("receiver layer enriched")
  a2.set_ylabel("mean P(gold letter)")
  a2.legend(fontsize=7)
  return _save(fig, path)


def plot_transform(result: dict, path) -> pathlib.Path:
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4.4))
  for ax, kv in zip(axes, ("k", "v")):
    r = result["kv"][kv]
    for name, color in (("source", "C0"), ("target", "C1"), ("transformed", "C2")):
      pts = np.asarray(r["embedding"][name])
      ax.scatter(pts[:, 0], pts[:, 1], s=5, alpha=0.6, color=color, label=name)
    ax.set_title(f"{'keys' if kv == 'k' else 'values'}: held-out rel. error "
                 f"{r['heldout_relative_error']:.2f} "
                 f"(linear {r['heldout_linear_relative_error']:.2f})", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7)
  fig.suptitle(f"{r['embedding']['method']} of held-out tokens, receiver layer "
               f"{result['receiver_layer']} <- sharer layer {result['sharer_layer']}", fontsize=10)
  return _save(fig, path)


def plot_probe(result: dict, path) -> pathlib.Path:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 3.6))
  for name, v in result["variants"].items():
    acc = [r["accuracy"] for r in v["layers"]]
    ax.plot(range(len(acc)), acc, "--" if "no_document" in name else "-", marker="o", ms=3,
            label=f"{name} (all layers {v['all_layers']['accuracy']:.0%})")
  ax.axhline(0.25, color="grey", lw=0.8, ls=":", label="chance")
  ax.set_xlabel("layer")
  ax.set_ylabel("held-out accuracy (4 options)")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=7)
  fig.suptitle(f"linear probe of the answer in the last fused slot ({result['test']} held-out)",
               fontsize=10)
  return _save(fig, path)


def plot_rank(result: dict, path) -> pathlib.Path:
  plt = _pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
  rows = result["layers"]
  x = [r["layer"] for r in rows]
  for ax, kv in zip(axes, ("k", "v")):
    ax.plot(x, [r[f"{kv}_before"] for r in rows], "o-", ms=3, label="receiver")
    ax.plot(x, [r[f"{kv}_after"] for r in rows], "s-", ms=3, label="fused")
    ax.set_xlabel("receiver layer")
    ax.set_ylabel(f"effective rank ({'keys' if kv == 'k' else 'values'})")
    ax.legend(fontsize=7)
  fig.suptitle(f"effective rank over {result['tokens']} tokens", fontsize=10)
  return _save(fig, path)
