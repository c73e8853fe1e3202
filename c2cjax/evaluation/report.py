"""Accuracy, confidence intervals, latency and token counts from per-question records.

Statistics, per (benchmark, system) overall, per category and per subject:
  * accuracy = correct / n, with a 95% Wilson score interval (z = 1.959964); unparsable replies
    count as wrong and are also reported as `unparsable_rate`.
  * time per query: mean, p50, p95 (numpy's default linear interpolation), total.
  * tokens generated: mean and total.
  * paired against the receiver (per benchmark, every other system, on the questions both
    answered, joined by `question_id`): accuracy difference, the discordant counts (only the
    system right / only the receiver right) and the exact two-sided McNemar p-value. Paired
    on the same questions, this separates systems that the per-system intervals cannot.

Ordering: benchmarks and systems in order of first appearance in the records, categories and
subjects sorted; floats rounded to 6 decimals. The same records give byte-identical JSON and
Markdown (the PNG carries no timestamp or version metadata).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from c2cjax import files

Z95 = 1.959963984540054
CI_METHOD = "Wilson score interval, 95% (z=1.96)"
BASELINE = "receiver"
PAIRED_TEST = "exact McNemar, two-sided"


@dataclasses.dataclass(frozen=True)
class Record:
  """One scored question for one system.

  Attributes:
    system: e.g. "receiver", "sharer", "t2t", "c2c".
    benchmark, subject, category: copied from the `Question`.
    correct: the parsed answer equals the gold answer (False when unparsable).
    parsed: the reply yielded an option at all.
    time_s: wall time of the query (prefill + decode), seconds.
    tokens_generated: decoded tokens.
    question_id: the `Question.id`, for joining records across systems.
  """

  system: str
  benchmark: str
  subject: str
  category: str
  correct: bool
  parsed: bool
  time_s: float
  tokens_generated: int
  question_id: str = ""

  def __post_init__(self):
    if self.correct and not self.parsed:
      raise ValueError(f"{self.question_id}: an unparsable reply cannot be correct")


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval for a binomial proportion; (0, 1) when n == 0."""
  if n == 0:
    return 0.0, 1.0
  p = correct / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  lo = 0.0 if correct == 0 else max(0.0, centre - half)
  hi = 1.0 if correct == n else min(1.0, centre + half)
  return lo, hi


def stats(records: Sequence[Record]) -> dict[str, Any]:
  """The statistics of one non-empty group of records, as a JSON-ready dict."""
  if not records:
    raise ValueError("no records")
  n = len(records)
  correct = sum(r.correct for r in records)
  unparsable = sum(not r.parsed for r in records)
  times = np.array([r.time_s for r in records], np.float64)
  tokens = np.array([r.tokens_generated for r in records], np.int64)
  lo, hi = wilson_interval(correct, n)
  out = {
      "n": n, "correct": correct, "accuracy": correct / n, "ci95": [lo, hi],
      "unparsable": unparsable, "unparsable_rate": unparsable / n,
      "time_s": {"mean": times.mean(), "p50": np.percentile(times, 50),
                 "p95": np.percentile(times, 95), "total": times.sum()},
      "tokens_generated": {"mean": tokens.mean(), "total": int(tokens.sum())},
  }
  return _rounded(out)


def summarize(records: Iterable[Record]) -> dict[str, Any]:
  """{"results": {benchmark: {system: {"overall", "by_category", "by_subject"}}}, ...}."""
  records = list(records)
  benchmarks = _ordered(r.benchmark for r in records)
  systems = _ordered(r.system for r in records)
  results = {}
  for b in benchmarks:
    results[b] = {}
    for s in systems:
      group = [r for r in records if r.benchmark == b and r.system == s]
      if not group:
        continue
      results[b][s] = {
          "overall": stats(group),
          "by_category": {c: stats([r for r in group if r.category == c])
                          for c in sorted({r.category for r in group})},
          "by_subject": {x: stats([r for r in group if r.subject == x])
                         for x in sorted({r.subject for r in group})},
      }
  paired = {b: p for b in benchmarks
            if (p := _paired(BASELINE, [r for r in records if r.benchmark == b]))}
  return {"ci_method": CI_METHOD, "percentiles": "numpy linear interpolation",
          "benchmarks": benchmarks, "systems": systems, "results": results,
          "paired": {"baseline": BASELINE, "test": PAIRED_TEST, "results": paired}}


def mcnemar_exact(wins: int, losses: int) -> float:
  """Two-sided exact McNemar p-value: the discordant pairs under Binomial(n, 1/2)."""
  n, k = wins + losses, min(wins, losses)
  if n == 0:
    return 1.0
  # Integer arithmetic: exact for any n (float binomial terms overflow past n ~ 1,000).
  return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def _paired(baseline: str, records: Sequence[Record]) -> dict[str, Any]:
  """Each system against `baseline` on the questions both answered (empty without ids)."""
  by_system: dict[str, dict[str, bool]] = {}
  for r in records:
    if not r.question_id:
      return {}
    by_system.setdefault(r.system, {})[r.question_id] = r.correct
  base = by_system.pop(baseline, None)
  if base is None:
    return {}
  out = {}
  for s, answers in by_system.items():
    common = [q for q in answers if q in base]
    if not common:
      continue
    wins = sum(answers[q] and not base[q] for q in common)
    losses = sum(base[q] and not answers[q] for q in common)
    out[s] = {"n": len(common), "diff": round((wins - losses) / len(common), 6),
              "wins": wins, "losses": losses,
              "p": float(f"{mcnemar_exact(wins, losses):.3g}")}  # 3 significant digits
  return out


def markdown(summary: dict[str, Any]) -> str:
  """Markdown tables: per benchmark an overall table, category and subject accuracy, then
  the paired comparison against the receiver (when the records carry question ids)."""
  lines = [f"Accuracy in %, 95% CI: {summary['ci_method']}. Time per query in seconds.", ""]
  for b, by_system in summary["results"].items():
    lines += [f"## {b}", "",
              "| system | n | accuracy (95% CI) | unparsable | time mean | p50 | p95 "
              "| tokens mean |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s, res in by_system.items():
      o = res["overall"]
      t = o["time_s"]
      lines.append(
          f"| {s} | {o['n']} | {_pct(o)} | {100 * o['unparsable_rate']:.1f}% "
          f"| {t['mean']:.3f} | {t['p50']:.3f} | {t['p95']:.3f} "
          f"| {o['tokens_generated']['mean']:.1f} |")
    for level in ("by_category", "by_subject"):
      keys = sorted({k for res in by_system.values() for k in res[level]})
      if len(keys) < 2:
        continue
      lines += ["", f"{level.replace('_', ' ').capitalize()}:", "",
                "| " + level[3:] + " | " + " | ".join(by_system) + " |",
                "|---|" + "---:|" * len(by_system)]
      for k in keys:
        cells = [_pct(res[level][k]) if k in res[level] else "-" for res in by_system.values()]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    paired = summary.get("paired", {}).get("results", {}).get(b)
    if paired:
      base = summary["paired"]["baseline"]
      lines += ["", f"Paired against {base}, same questions ({summary['paired']['test']}):", "",
                f"| system | n | difference (points) | only system right | only {base} right "
                "| p |", "|---|---:|---:|---:|---:|---:|"]
      for s, p in paired.items():
        lines.append(f"| {s} | {p['n']} | {100 * p['diff']:+.1f} | {p['wins']} "
                     f"| {p['losses']} | {p['p']:.2g} |")
    lines.append("")
  return "\n".join(lines)


def plot_accuracy(summary: dict[str, Any], path: str | pathlib.Path) -> None:
  """Grouped bar chart of overall accuracy: benchmarks on x, one bar per system, CI error bars."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  benchmarks, systems = summary["benchmarks"], summary["systems"]
  width = 0.8 / max(1, len(systems))
  fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(benchmarks) * max(1, len(systems)) ** 0.5),
                                  3.6))
  for i, s in enumerate(systems):
    xs, acc, err_lo, err_hi = [], [], [], []
    for j, b in enumerate(benchmarks):
      res = summary["results"][b].get(s)
      if res is None:
        continue
      o = res["overall"]
      xs.append(j - 0.4 + width * (i + 0.5))
      acc.append(100 * o["accuracy"])
      err_lo.append(100 * (o["accuracy"] - o["ci95"][0]))
      err_hi.append(100 * (o["ci95"][1] - o["accuracy"]))
    ax.bar(xs, acc, width, yerr=[err_lo, err_hi], capsize=3, label=s)
  ax.set_xticks(range(len(benchmarks)), benchmarks)
  ax.set_ylabel("accuracy (%)")
  ax.set_ylim(0, 105)
  ax.set_title("Accuracy by system (95% Wilson CI)")
  ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.1),
            ncol=min(4, max(1, len(systems))), frameon=False)
  fig.tight_layout()
  fig.savefig(path, dpi=120, metadata={"Software": None})
  plt.close(fig)


def write_report(records: Iterable[Record], out_dir: str | pathlib.Path,
                 name: str = "report") -> dict[str, pathlib.Path]:
  """Writes {name}.json, {name}.md and {name}_accuracy.png under `out_dir`; returns the paths.

  The three are written to temporary files first and renamed over the old ones only when all
  are complete: a failed or interrupted write leaves the previous report, never a mix or a
  truncated file.
  """
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  summary = summarize(records)
  paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md",
           "chart": out / f"{name}_accuracy.png"}
  with (files.atomic_path(paths["json"]) as tmp_json, files.atomic_path(paths["markdown"]) as
        tmp_md, files.atomic_path(paths["chart"]) as tmp_chart):
    tmp_json.write_text(files.dumps_strict(summary, indent=2, ensure_ascii=False) + "\n",
                        encoding="utf-8")
    tmp_md.write_text(markdown(summary), encoding="utf-8")
    plot_accuracy(summary, tmp_chart)
  return paths


def save_records(records: Iterable[Record], path: str | pathlib.Path) -> None:
  """One JSON object per line, so a report can be rebuilt (or merged) later; atomic."""
  files.atomic_write_text(path, "".join(
      files.dumps_strict(dataclasses.asdict(r), ensure_ascii=False) + "\n"
      for r in records))


def load_records(path: str | pathlib.Path) -> list[Record]:
  """The records of :func:`save_records`; a bad line is an error naming the file and line."""
  out = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        out.append(Record(**json.loads(line)))
      except (json.JSONDecodeError, TypeError) as e:
        raise files.CorruptFileError(f"{path}, line {i}: not a record ({e})") from None
  return out


def _pct(o: dict[str, Any]) -> str:
  lo, hi = o["ci95"]
  return f"{100 * o['accuracy']:.1f} ({100 * lo:.1f}-{100 * hi:.1f})"


def _ordered(items: Iterable[str]) -> list[str]:
  return list(dict.fromkeys(items))


def _rounded(x: Any) -> Any:
  if isinstance(x, dict):
    return {k: _rounded(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_rounded(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return round(float(x), 6)
  if isinstance(x, np.integer):
    return int(x)
  return x
