"""Evaluation outputs, and merging the outputs of runs in parts (shards) into one.

Outputs in ``{output_dir}/{name}/``: per method ``{method}.json|.md|_accuracy.png`` (via
``report.write_report``) and ``{method}_records.jsonl``, all predictions with scores and
replies in ``predictions.jsonl``, and the config in ``config.json``.

A long run goes in parts: ``--config.shard=k/n`` evaluates every n-th question from the k-th;
``merge`` then writes the reports of all the parts' predictions, without loading a model.
It checks that the parts ran the same models, fusers and prompts, that no question is
counted twice, and that the output is none of the parts. Every file is written atomically.
Parts written before configs took tuples (comma-separated strings) merge with newer ones.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

from c2cjax import files
from c2cjax.evaluation import report
from c2cjax.evaluation.datasets import Question
from c2cjax.evaluation.runner import Prediction


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
  files.atomic_write_text(paths["predictions"], "".join(prediction_lines))
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
    files.atomic_write_text(paths["config"], config.to_json_best_effort(indent=2) + "\n")
  return paths


# Config fields that do not change an evaluation's results.
_RESULT_NEUTRAL = ("progress", "warmup")


def earlier_outputs(out_dir, config) -> dict[str, pathlib.Path] | None:
  """The outputs of the same evaluation already in ``out_dir``, or None when it holds no
  finished one (``config.json`` is written last).

  The same: an equal config but for :data:`_RESULT_NEUTRAL` fields; for a merge, the same
  parts.

  Raises:
    FileExistsError: ``out_dir`` holds a finished evaluation of another config (the fields
      that differ are named); it is never overwritten.
  """
  out = pathlib.Path(out_dir)
  if not (out / "config.json").is_file():
    return None
  old = files.read_json(out / "config.json", "evaluation config")
  new = json.loads(config.to_json_best_effort())
  if new.get("merge"):
    diff = [] if [str(p) for p in new["merge"]] == old.get("merge") else ["merge"]
  else:
    diff = [k for k in sorted(set(old) | set(new)) if k not in _RESULT_NEUTRAL
            and _comparable(k, old.get(k)) != _comparable(k, new.get(k))]
  if diff:
    shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff[:4])
    more = f" (+{len(diff) - 4} more)" if len(diff) > 4 else ""
    raise FileExistsError(f"{out} holds an evaluation of another config ({shown}{more}); "
                          "it is kept: choose another --config.name or --config.output_dir")
  done = (out / "config.json").stat().st_mtime
  for fuser in [*new.get("fusers", ()), *new.get("self_fusers", ())]:
    meta = pathlib.Path(fuser) / "fuser" / "metadata"  # c2cjax.fuse.io's layout
    if meta.is_file() and meta.stat().st_mtime > done:
      raise FileExistsError(f"{out} holds an evaluation made before the fuser at {fuser} "
                            "was written again; it is kept: choose another --config.name or "
                            "--config.output_dir")
  paths = {}
  for rec in sorted(out.glob("*_records.jsonl")):
    m = rec.name[:-len("_records.jsonl")]
    paths.update({f"{m}.json": out / f"{m}.json", f"{m}.markdown": out / f"{m}.md",
                  f"{m}.chart": out / f"{m}_accuracy.png", f"{m}.records": rec})
  paths.update(predictions=out / "predictions.jsonl", config=out / "config.json")
  return paths


# Config fields that may differ between the parts of one merged evaluation.
_PART_FIELDS = ("name", "output_dir", "benchmarks", "subjects", "limit", "shard", "merge",
                "systems", "methods", "batch_size", "cloze_batch_size", "warmup", "progress",
                "ceval_path")
# Fields that were comma-separated strings before configs took tuples.
_LIST_FIELDS = ("sharers", "fusers")


def _comparable(key: str, value):
  if key in _LIST_FIELDS and isinstance(value, str):
    return [v.strip() for v in value.split(",") if v.strip()]
  return value


def merge(parts: Sequence[str | pathlib.Path], out_dir) -> dict[str, pathlib.Path]:
  """Reports of all predictions of several runs' output folders (shards), in ``out_dir``.

  Raises:
    FileNotFoundError: a folder without ``config.json`` / ``predictions.jsonl``.
    ValueError: parts with different models, fusers or prompts (the field is named), or a
      (benchmark, system, method, question) present in two parts.
  """
  if not parts:
    raise ValueError("merge needs at least one output folder")
  out = pathlib.Path(out_dir).resolve()
  for part in map(pathlib.Path, parts):
    if part.resolve() == out:
      raise ValueError(f"the merge output {out_dir} is one of its parts ({part}): merging "
                       "would overwrite that part's records; choose another name or "
                       "output_dir")
  configs, predictions, records = [], [], {}
  seen: dict[tuple, pathlib.Path] = {}
  for part in map(pathlib.Path, parts):
    for f in ("config.json", "predictions.jsonl"):
      if not (part / f).is_file():
        raise FileNotFoundError(f"{part / f} not found: is {part} an evaluation's output "
                                "folder ({output_dir}/{name})?")
    config = files.read_json(part / "config.json", "evaluation config")
    if configs:
      first, first_path = configs[0]
      for key in sorted(set(first) | set(config)):
        if key not in _PART_FIELDS and (_comparable(key, first.get(key))
                                        != _comparable(key, config.get(key))):
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
  config = dict(configs[0][0], shard="", merge=[str(p) for _, p in configs])
  paths["config"] = pathlib.Path(out_dir) / "config.json"
  files.atomic_write_text(paths["config"], json.dumps(config, indent=2) + "\n")
  return paths
