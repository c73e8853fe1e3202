"""Distinct pass-2 splits over real training batches under three start rules.

  python benchmarks/issue16_train25/pass2_splits.py configs/local.py 500

Reads the first N batches of the config's training pipeline (its models' tokenizers are
loaded; nothing is trained) and counts the ``(T, start, fused_end)`` variants a run would
compile, and pass 2's tokens, under: the rule before a984dbf (``start`` rounded down to a
multiple of ``g = T / pass2_parts``); a984dbf's (also any start one slot before a
multiple); and ``train_step.pass2_split``'s own (also ``start = fused_end - 1``).
Writes nothing.
"""

import argparse
import collections
import importlib.util
import pathlib
import sys

from c2cjax import config_check


def load_config(path: pathlib.Path):
  """The file's ``get_config()``, checked as ``python -m c2cjax.train`` checks it."""
  spec = importlib.util.spec_from_file_location("pass2_splits_config", path)
  if spec is None or path.suffix != ".py":
    raise config_check.ConfigError([f"{path} is not a Python config file (configs/*.py)"],
                                   "invalid training config")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise config_check.ConfigError([f"{path} has no get_config(): not a training config"],
                                   "invalid training config")
  cfg = module.get_config()
  config_check.validate_train_config(cfg)
  if cfg.get("pass2_parts", 0) == 0 or cfg.get("alignment") == "release":
    raise config_check.ConfigError(
        ["pass2_parts=0 or alignment='release': pass 2 always reruns the whole sequence, "
         "there are no splits to count"], "nothing to measure")
  return cfg


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("config", type=pathlib.Path, help="a training config file (configs/*.py)")
  ap.add_argument("batches", type=config_check.count_arg(1), help="batches to read")
  args = ap.parse_args()
  if not args.config.is_file():
    ap.error(f"config {args.config}: no such file")
  try:
    cfg = load_config(args.config)
  except config_check.ConfigError as e:
    ap.error(str(e))
  import jax  # pylint: disable=import-outside-toplevel  (after the checks: they are quick)
  from c2cjax import train  # pylint: disable=import-outside-toplevel
  c2c = train.build_c2c(cfg, jax.random.PRNGKey(0))
  data, _ = train.build_data(cfg, c2c, cfg.global_batch_size, heldout=False, seed=0)
  it = iter(data)
  variants = {k: collections.Counter() for k in ("before", "any -1", "fused_end - 1")}
  tokens = collections.Counter()
  for _ in range(args.batches):
    batch = next(it)
    t = batch["receiver_ids"].shape[-1]
    g = max(1, t // cfg.pass2_parts)
    start, end = train.pass2_split(batch, cfg.pass2_parts)
    exact, _ = train.pass2_split(batch, t)  # g = 1: the start unrounded
    starts = {"before": (exact // g) * g, "fused_end - 1": start,
              "any -1": exact if exact % g == g - 1 else (exact // g) * g}
    for k, s in starts.items():
      variants[k][(t, s, end)] += 1
      tokens[k] += t - s
  del it  # its prefetch threads stop now, not at interpreter exit (grain's __del__ fails then)
  for k in variants:
    print(f"{k:>14}: {len(variants[k])} distinct splits, {tokens[k]} pass-2 tokens a row")


if __name__ == "__main__":
  try:
    main()
  except KeyboardInterrupt:
    print("pass2_splits.py: interrupted; it writes nothing, so nothing is lost", file=sys.stderr)
    sys.exit(130)
