"""``python -m c2cjax.analysis <command> --...``: see :mod:`c2cjax.analysis`."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import jax

from c2cjax import files
from c2cjax.analysis import plots
from c2cjax.config_check import count_arg


def _models(args, sharer: bool = True):
  from c2cjax.models.load import resolve  # pylint: disable=import-outside-toplevel
  receiver = resolve(args.receiver, seed=args.seed)
  if not sharer:
    return receiver, None
  if args.sharer in ("self", args.receiver):
    return receiver, receiver
  return receiver, resolve(args.sharer, seed=args.seed + 1)


def _questions(args, count: int, offset: int = 0):
  from c2cjax.evaluation import datasets  # pylint: disable=import-outside-toplevel
  qs = datasets.load_benchmark(args.benchmark, limit=offset + count, seed=args.seed)
  if len(qs) < offset + count:
    raise ValueError(f"{args.benchmark} has {len(qs)} questions, {offset + count} needed")
  return qs[offset:offset + count]


def _texts(args, receiver, count: int) -> list[str]:
  from c2cjax.evaluation import prompts  # pylint: disable=import-outside-toplevel
  return [prompts.mcq_prompt(q, receiver.tokenizer) for q in _questions(args, count)]


def _progress(args):
  if not args.progress:
    return None
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  return lambda xs: tqdm(xs, leave=False)


def cmd_enrichment(args) -> tuple[dict, callable]:
  """Direct vs few-shot vs oracle, and layer-wise enrichment."""
  from c2cjax.analysis import enrichment  # pylint: disable=import-outside-toplevel
  receiver, _ = _models(args, sharer=False)
  qs = _questions(args, args.limit + args.shots)
  result = enrichment.run(receiver, qs[args.shots:], qs[:args.shots], layers=not args.no_layers,
                          progress=_progress(args))
  return {"benchmark": args.benchmark, "receiver": args.receiver, **result}, plots.plot_enrichment


def cmd_transform(args):
  """MLP from the sharer's per-token KV to the receiver's; t-SNE/PCA."""
  from c2cjax import fuse as fuse_lib  # pylint: disable=import-outside-toplevel
  from c2cjax.analysis import transform  # pylint: disable=import-outside-toplevel
  receiver, sharer = _models(args)
  m = fuse_lib.last_aligned(receiver.config.num_layers, sharer.config.num_layers)
  pair = m.pairs()[args.pair]
  result = transform.run(receiver, sharer, _texts(args, receiver, args.texts),
                         receiver_layer=pair[0], sharer_layer=pair[1], steps=args.steps,
                         hidden=args.hidden, seed=args.seed)
  return {"benchmark": args.benchmark, "receiver": args.receiver, "sharer": args.sharer,
          **result}, plots.plot_transform


def cmd_rank(args):
  """Effective rank of the receiver's KV per layer before/after fusion."""
  from c2cjax import fuse as fuse_lib  # pylint: disable=import-outside-toplevel
  from c2cjax.analysis import rank  # pylint: disable=import-outside-toplevel
  if args.fuser:
    params, config, layer_map, meta = fuse_lib.load(args.fuser)
    if len(layer_map) != 1:
      raise ValueError(f"{args.fuser} holds several fusers; rank reads one-sharer checkpoints")
    (params,), (config,), (layer_map,) = params, config, layer_map
    if meta.get("self_fusion"):
      args.sharer = "self"
  receiver, sharer = _models(args)
  if not args.fuser:  # a fresh fuser with open gates: the smoke / untrained reference
    config = fuse_lib.FuserConfig.for_models(receiver.config, sharer.config, hidden_dim=64,
                                             intermediate_dim=64)
    layer_map = fuse_lib.last_aligned(receiver.config.num_layers, sharer.config.num_layers)
    params = fuse_lib.init(config, layer_map, jax.random.PRNGKey(args.seed))
    params = {**params, "key_gate_logit": params["key_gate_logit"] + 1.0,
              "value_gate_logit": params["value_gate_logit"] + 1.0}
  result = rank.run(receiver, sharer, params, config, layer_map,
                    _texts(args, receiver, args.texts))
  return {"receiver": args.receiver, "sharer": args.sharer, "fuser": args.fuser or "random, open",
          **result}, plots.plot_rank


def cmd_probe(args):
  """Linear probes of the answer in the last fused slot (private-document task)."""
  from c2cjax.analysis import probe  # pylint: disable=import-outside-toplevel
  from c2cjax.data import synthetic  # pylint: disable=import-outside-toplevel
  receiver, sharer = _models(args)
  models = {"sharer": sharer} if sharer is not receiver else {}
  if not args.sharer_only:
    models["receiver"] = receiver
  template = synthetic.cloze_template(receiver.tokenizer)
  result = probe.run(models, template, args.train, args.test, seed=args.seed,
                     progress=_progress(args))
  for line in probe.summary(result):
    print(line)
  return {"receiver": args.receiver, "sharer": args.sharer, **result}, plots.plot_probe


def cmd_gates(args):
  """Gate logits and openness per layer of a fuser checkpoint."""
  return plots.gates(args.fuser), plots.plot_gates


def cmd_curves(args):
  """Training curves of a run (metrics.jsonl)."""
  series = plots.curves(plots.read_metrics(args.run))
  return ({"run": args.run, "series": series},
          lambda r, p: plots.plot_curves(r["series"], p, title=str(args.run)))


COMMANDS = {"enrichment": cmd_enrichment, "transform": cmd_transform, "rank": cmd_rank,
            "probe": cmd_probe, "gates": cmd_gates, "curves": cmd_curves}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m c2cjax.analysis", description=__doc__)
  sub = p.add_subparsers(dest="command", required=True)
  subs = {}
  for name in COMMANDS:
    s = sub.add_parser(name, help=(COMMANDS[name].__doc__ or name).strip())
    s.add_argument("--out", default=None, help="output folder (default outputs/analysis/<cmd>)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--progress", action="store_true")
    subs[name] = s
  for name in ("enrichment", "transform", "rank", "probe"):
    s = subs[name]
    s.add_argument("--receiver", default="offline:smollm2", help="model spec (models.load.resolve)")
    s.add_argument("--benchmark", default="arc_challenge", help="questions / prompt texts")
    if name != "enrichment":
      s.add_argument("--sharer", default="offline:gemma3", help="model spec, or 'self'")
      s.add_argument("--texts", type=count_arg(1), default=40, help="prompts to read")
  subs["enrichment"].add_argument("--limit", type=count_arg(1), default=50, help="questions scored")
  subs["enrichment"].add_argument("--shots", type=count_arg(0), default=3)
  subs["enrichment"].add_argument("--no-layers", action="store_true",
                                  help="skip single-layer enrichment (groups only)")
  subs["transform"].add_argument("--pair", type=int, default=-1,
                                 help="index into the last_aligned layer map (default the last)")
  subs["transform"].add_argument("--steps", type=count_arg(1), default=500)
  subs["transform"].add_argument("--hidden", type=count_arg(1), default=256)
  subs["rank"].add_argument("--fuser", default=None,
                            help="fuser checkpoint (default: a fresh one with open gates)")
  subs["probe"].add_argument("--train", type=count_arg(1), default=600,
                             help="training-split questions (closed-vocabulary attributes)")
  subs["probe"].add_argument("--test", type=count_arg(1), default=400, help="held-out questions")
  subs["probe"].add_argument("--sharer-only", action="store_true",
                             help="probe the sharer only (not the receiver reading the same)")
  subs["gates"].add_argument("--fuser", required=True, help="fuser checkpoint (fuse.save)")
  subs["curves"].add_argument("--run", required=True, help="training workdir or metrics.jsonl")
  return p


def main(argv: Sequence[str] | None = None) -> dict:
  """Runs one command; earlier results are never overwritten (a usage error, exit 2,
  before anything loads); a missing or corrupt input file is one line, exit 1."""
  p = parser()
  args = p.parse_args(argv)
  out = pathlib.Path(args.out or f"outputs/analysis/{args.command}")
  taken = [f for f in (out / f"{args.command}.json", out / f"{args.command}.png") if f.exists()]
  if taken:
    p.error(f"{taken[0]} exists (an earlier {args.command} run); it is kept: give another "
            "--out")
  try:
    result, plot = COMMANDS[args.command](args)
  except (FileNotFoundError, files.CorruptFileError) as e:
    print(f"{p.prog}: error: {e}", file=sys.stderr)
    sys.exit(1)
  out.mkdir(parents=True, exist_ok=True)
  files.atomic_write_text(out / f"{args.command}.json", json.dumps(result, indent=2) + "\n")
  plot(result, out / f"{args.command}.png")
  print(f"wrote {out / args.command}.json and .png")
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
