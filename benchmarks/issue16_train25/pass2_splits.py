"""Distinct pass-2 splits over real training batches under three start rules.

  python benchmarks/issue16_train25/pass2_splits.py configs/local.py 500

Reads the first N batches of the config's training pipeline (its models' tokenizers are
loaded; nothing is trained) and counts the ``(T, start, fused_end)`` variants a run would
compile, and pass 2's tokens, under: the rule before a984dbf (``start`` rounded down to a
multiple of ``g = T / pass2_parts``); a984dbf's (also any start one slot before a
multiple); and ``train_step.pass2_split``'s own (also ``start = fused_end - 1``).
"""

import collections
import importlib.util
import sys

import jax

from c2cjax import train


def main(config_path: str, n: int) -> None:
  spec = importlib.util.spec_from_file_location("config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  c2c = train.build_c2c(cfg, jax.random.PRNGKey(0))
  data, _ = train.build_data(cfg, c2c, cfg.global_batch_size, heldout=False, seed=0)
  it = iter(data)
  variants = {k: collections.Counter() for k in ("before", "any -1", "fused_end - 1")}
  tokens = collections.Counter()
  for _ in range(n):
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
  main(sys.argv[1], int(sys.argv[2]))
