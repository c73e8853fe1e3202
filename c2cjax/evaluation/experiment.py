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

from c2cjax import config_check
from c2cjax.evaluation import datasets, prompts
from c2cjax.evaluation.datasets import Question
from c2cjax.evaluation.merge import earlier_outputs, merge, write_outputs
from c2cjax.evaluation.runner import METHODS, Evaluator, Settings
from c2cjax.evaluation.systems import SYSTEMS, build_systems, config_names

MULTI_SUBJECT = ("mmlu_redux", "ceval")


def settings_from_config(config) -> Settings:
  return Settings(
      batch_size=config.batch_size, cloze_batch_size=config.cloze_batch_size,
      buckets=tuple(config.buckets), continuation_buckets=tuple(config.continuation_buckets),
      max_new_tokens=config.max_new_tokens, background_tokens=config.background_tokens,
      warmup=config.warmup, progress=config.progress,
      prompts=prompts.PromptConfig(**config.prompts.to_dict()))


def check_config(config) -> None:
  """Raises ``ConfigError`` naming every bad field: names of benchmarks, systems, methods;
  the shard; counts and sizes. Nothing is loaded."""
  problems = []
  for key, known in (("benchmarks", datasets.BENCHMARKS), ("systems", SYSTEMS),
                     ("methods", METHODS), ("subjects", None), ("merge", None)):
    try:
      config_names(config, key, known)
    except ValueError as e:
      problems.append(str(e))
  try:
    parse_shard(config.get("shard"))
  except ValueError as e:
    problems.append(str(e))
  problems += config_check.field_problems(config, {
      "limit": config_check.or_none(config_check.integer(0)), "name": config_check.nonempty,
      "batch_size": config_check.integer(1), "cloze_batch_size": config_check.integer(1),
      "max_new_tokens": config_check.integer(1), "background_tokens": config_check.integer(0),
  }, required=False)
  if problems:
    raise config_check.ConfigError(problems, "invalid evaluation config")


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
      except (datasets.HubError, FileNotFoundError) as e:  # asked for: never skipped
        where = (f"--config.ceval_path={config.ceval_path}" if config.ceval_path else
                 "the Hugging Face hub (no --config.ceval_path)")
        raise FileNotFoundError(
            f"C-Eval is in benchmarks but cannot be read from {where}: {e}; set "
            "--config.ceval_path to a C-Eval directory, or leave ceval out of benchmarks"
        ) from e
      continue
    out[name] = datasets.load_benchmark(name, **kw)
  return {name: qs[k::n] for name, qs in out.items()}


def _log_reports(paths: dict[str, pathlib.Path], log: Callable[[str], None]) -> None:
  for key in (k for k in paths if k.endswith(".markdown")):
    log(f"\n# {key[:-len('.markdown')]}\n\n" + paths[key].read_text())


def run(config, log: Callable[[str], None] = print) -> dict[str, pathlib.Path]:
  """Loads everything ``config`` names, evaluates and writes ``{output_dir}/{name}/``
  (with ``config.merge``: only merges those folders' reports there).

  The config is checked first (``ConfigError``). A folder that holds a finished evaluation
  is never overwritten: of this same config, its reports are returned as they are; of
  another, ``FileExistsError`` names the fields that differ.
  """
  check_config(config)
  out_dir = pathlib.Path(config.output_dir) / config.name
  earlier = earlier_outputs(out_dir, config)  # never overwritten
  if earlier is not None:
    _log_reports(earlier, log)
    log(f"{out_dir} already holds this evaluation: nothing to do (another --config.name "
        "evaluates again)")
    return earlier
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
