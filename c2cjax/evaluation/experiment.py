"""One evaluation run from a config (``c2cjax.defaults.eval_config``): questions, systems,
predictions, reports in ``{output_dir}/{name}/`` (or, with ``merge``, the merged reports of
earlier runs' folders).

Lists in the config are tuples, as in training's; on the command line a tuple is one
Python literal or a repeated flag (ml_collections ``config_flags``):
``--config.benchmarks="('arc_challenge', 'openbookqa')"`` or
``--config.benchmarks=arc_challenge --config.benchmarks=openbookqa``; a single name is a
tuple of one (``--config.benchmarks=arc_challenge``).
"""

from __future__ import annotations

import pathlib
from typing import Callable

from c2cjax.evaluation import datasets, prompts
from c2cjax.evaluation.datasets import Question
from c2cjax.evaluation.merge import merge, write_outputs
from c2cjax.evaluation.runner import METHODS, Evaluator, Settings
from c2cjax.evaluation.systems import build_systems, config_names

MULTI_SUBJECT = ("mmlu_redux", "ceval")


def settings_from_config(config) -> Settings:
  return Settings(
      batch_size=config.batch_size, cloze_batch_size=config.cloze_batch_size,
      buckets=tuple(config.buckets), continuation_buckets=tuple(config.continuation_buckets),
      max_new_tokens=config.max_new_tokens, background_tokens=config.background_tokens,
      warmup=config.warmup, progress=config.progress,
      prompts=prompts.PromptConfig(**config.prompts.to_dict()))


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
  subjects = config_names(config, "subjects") or None
  k, n = parse_shard(config.get("shard"))
  out = {}
  for name in config_names(config, "benchmarks", datasets.BENCHMARKS):
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


def _log_reports(paths: dict[str, pathlib.Path], log: Callable[[str], None]) -> None:
  for key in (k for k in paths if k.endswith(".markdown")):
    log(f"\n# {key[:-len('.markdown')]}\n\n" + paths[key].read_text())


def run(config, log: Callable[[str], None] = print) -> dict[str, pathlib.Path]:
  """Loads everything ``config`` names, evaluates and writes ``{output_dir}/{name}/``
  (with ``config.merge``: only merges those folders' reports there)."""
  out_dir = pathlib.Path(config.output_dir) / config.name
  parts = config_names(config, "merge")
  if parts:
    paths = merge(parts, out_dir)
    _log_reports(paths, log)
    log(f"merged reports in {out_dir}")
    return paths
  methods = config_names(config, "methods", METHODS)
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
