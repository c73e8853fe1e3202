"""Multiple-choice benchmarks as lists of `Question`: MMLU-Redux, ARC-Challenge, OpenBookQA, C-Eval,
and the synthetic private-document task (``synthetic_docs``, generated locally; its questions
carry the document in `Question.context`, for the sharer only).

Every loader reads from one of three sources:

  "packaged"  the copies shipped in ``c2cjax/evaluation/files`` (MMLU-Redux, ARC-Challenge,
              OpenBookQA; see the README there for sources and licences). Works offline.
  "local"     a directory (or file) the user gives, laid out like the packaged copies; the only
              way to read C-Eval from disk, since C-Eval (CC BY-NC-SA 4.0) is never shipped.
  "hub"       ``datasets.load_dataset`` on the Hugging Face hub id in the loader's ``hub_id``.
              Needs the optional ``datasets`` package and network; failures raise `HubError`.

``source=None`` means "local" when ``path`` is given, else "packaged".

Selection, the same for every loader: ``subjects`` keeps only those subjects (unknown names
raise). ``limit`` keeps the N questions with the smallest key sha256(f"{seed}:{id}"): a seeded
order that depends only on each question's id, so it is stable across runs, Python versions
and subject filters (a subject-filtered limit is a subset of the same questions).
The result is always in canonical order: subjects sorted, then file row order.

Ids are ``"{benchmark}/{subject}/{row}"`` (``"{benchmark}/{row}"`` for single-subject sets),
the row being the 0-based position in the upstream split; the hub copies share that order, so
ids (and ``limit`` selections) agree across sources.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import io
import json
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Literal

Source = Literal["packaged", "local", "hub"]

FILES_DIR = pathlib.Path(__file__).resolve().parent / "files"

MMLU_REDUX_HUB = "edinburgh-dawg/mmlu-redux-2.0"  # 57 subjects x 100; v1 ("mmlu-redux") has 30.
ARC_CHALLENGE_HUB = "allenai/ai2_arc"  # config "ARC-Challenge", split "test"
OPENBOOKQA_HUB = "allenai/openbookqa"  # config "main", split "test"
CEVAL_HUB = "ceval/ceval-exam"  # config = subject, split "val"

BENCHMARKS = ("mmlu_redux", "arc_challenge", "openbookqa", "ceval", "synthetic_docs")


@dataclasses.dataclass(frozen=True)
class Question:
  """One multiple-choice question.

  Attributes:
    id: stable id, "{benchmark}/{subject}/{row}" or "{benchmark}/{row}".
    benchmark: one of BENCHMARKS.
    subject: e.g. "anatomy"; single-subject benchmarks use the benchmark name.
    category: coarse group (MMLU_CATEGORIES / CEVAL_CATEGORIES values, else the benchmark name).
    question: the bare question text (no "Question:" prefix, no options).
    choices: option texts, in letter order A, B, ...
    answer: index into `choices` of the gold answer.
    error_type: MMLU-Redux annotation, normalised ("ok", "wrong_groundtruth", ...); else None.
    context: a private document only some systems read (synthetic_docs); else "".
  """

  id: str
  benchmark: str
  subject: str
  category: str
  question: str
  choices: tuple[str, ...]
  answer: int
  error_type: str | None = None
  context: str = ""

  def __post_init__(self):
    if not 0 <= self.answer < len(self.choices):
      raise ValueError(f"{self.id}: answer {self.answer} outside {len(self.choices)} choices")

  @property
  def answer_letter(self) -> str:
    return chr(ord("A") + self.answer)


class HubError(RuntimeError):
  """The hub source could not be used (no `datasets` package, no network, bad id)."""


# The standard MMLU subject -> category map (Hendrycks et al., categories.py).
_MMLU_GROUPS = {
    "STEM": (
        "abstract_algebra astronomy college_biology college_chemistry "
        "college_computer_science college_mathematics college_physics computer_security "
        "conceptual_physics electrical_engineering elementary_mathematics high_school_biology "
        "high_school_chemistry high_school_computer_science high_school_mathematics "
        "high_school_physics high_school_statistics machine_learning"),
    "humanities": (
        "formal_logic high_school_european_history high_school_us_history "
        "high_school_world_history international_law jurisprudence logical_fallacies "
        "moral_disputes moral_scenarios philosophy prehistory professional_law world_religions"),
    "social sciences": (
        "econometrics high_school_geography high_school_government_and_politics "
        "high_school_macroeconomics high_school_microeconomics high_school_psychology "
        "human_sexuality professional_psychology public_relations security_studies sociology "
        "us_foreign_policy"),
    "other": (
        "anatomy business_ethics clinical_knowledge college_medicine global_facts human_aging "
        "management marketing medical_genetics miscellaneous nutrition professional_accounting "
        "professional_medicine virology"),
}
MMLU_CATEGORIES: dict[str, str] = {
    s: cat for cat, names in _MMLU_GROUPS.items() for s in names.split()}

# C-Eval's own subject -> category map (hkust-nlp/ceval subject_mapping.json).
_CEVAL_GROUPS = {
    "STEM": (
        "computer_network operating_system computer_architecture college_programming "
        "college_physics college_chemistry advanced_mathematics probability_and_statistics "
        "discrete_mathematics electrical_engineer metrology_engineer high_school_mathematics "
        "high_school_physics high_school_chemistry high_school_biology middle_school_mathematics "
        "middle_school_biology middle_school_physics middle_school_chemistry veterinary_medicine"),
    "Social Science": (
        "college_economics business_administration marxism mao_zedong_thought education_science "
        "teacher_qualification high_school_politics high_school_geography middle_school_politics "
        "middle_school_geography"),
    "Humanities": (
        "modern_chinese_history ideological_and_moral_cultivation logic law "
        "chinese_language_and_literature art_studies professional_tour_guide legal_professional "
        "high_school_chinese high_school_history middle_school_history"),
    "Other": (
        "civil_servant sports_science plant_protection basic_medicine clinical_medicine "
        "urban_and_rural_planner accountant fire_engineer "
        "environmental_impact_assessment_engineer tax_accountant physician"),
}
CEVAL_CATEGORIES: dict[str, str] = {
    s: cat for cat, names in _CEVAL_GROUPS.items() for s in names.split()}

# The one non-UTF-8 packaged file. The data README calls it cp1252, but its only non-ASCII
# byte, 0xD5 in "sister\xd5s", is Mac Roman's right single quote (cp1252 would give "Õ").
_LEGACY_ENCODING = {"moral_scenarios": "mac_roman"}


def normalize_error_type(label: str) -> str:
  """"OK ", "Wrong Groundtruth", "wrong_groundtruth " -> "ok", "wrong_groundtruth"."""
  return "_".join(label.strip().lower().split())


# --- public loaders ---------------------------------------------------------------------------
def load_mmlu_redux(*, source: Source | None = None, path: str | pathlib.Path | None = None,
                    subjects: Iterable[str] | None = None, limit: int | None = None,
                    seed: int = 0, ok_only: bool = False,
                    hub_id: str = MMLU_REDUX_HUB) -> list[Question]:
  """MMLU-Redux (57 subjects x 100). `ok_only` keeps questions annotated "ok".

  The paper scores every question against its given `answer`; `ok_only` is the cleaner subset.
  Local `path`: a directory of `mmlu_{subject}.csv` files (comma or semicolon separated).
  """
  src = _resolve_source(source, path, packaged=True)
  wanted = _check_subjects(subjects, MMLU_CATEGORIES, "mmlu_redux")
  questions = []
  for subject in wanted:
    if src == "hub":
      rows = _hub_rows(hub_id, subject, "test")
    else:
      root = pathlib.Path(path) if src == "local" else FILES_DIR / "mmlu_redux"
      rows = _read_mmlu_csv(root / f"mmlu_{subject}.csv", subject)
    for i, row in enumerate(rows):
      questions.append(Question(
          id=f"mmlu_redux/{subject}/{i}", benchmark="mmlu_redux", subject=subject,
          category=MMLU_CATEGORIES[subject], question=row["question"].strip(),
          choices=_choices(row["choices"]), answer=int(row["answer"]),
          error_type=normalize_error_type(str(row["error_type"]))))
  if ok_only:
    questions = [q for q in questions if q.error_type == "ok"]
  return select(questions, limit=limit, seed=seed)


def load_arc_challenge(*, source: Source | None = None, path: str | pathlib.Path | None = None,
                       subjects: Iterable[str] | None = None, limit: int | None = None,
                       seed: int = 0, hub_id: str = ARC_CHALLENGE_HUB) -> list[Question]:
  """ARC-Challenge test (1172). Local `path`: a JSONL file, or a directory with test.jsonl."""
  return _load_single(
      "arc_challenge", source, path, subjects, limit, seed,
      lambda: _hub_rows(hub_id, "ARC-Challenge", "test"), "question")


def load_openbookqa(*, source: Source | None = None, path: str | pathlib.Path | None = None,
                    subjects: Iterable[str] | None = None, limit: int | None = None,
                    seed: int = 0, hub_id: str = OPENBOOKQA_HUB) -> list[Question]:
  """OpenBookQA main test (500). Local `path`: a JSONL file, or a directory with test.jsonl."""
  return _load_single(
      "openbookqa", source, path, subjects, limit, seed,
      lambda: _hub_rows(hub_id, "main", "test"), "question_stem")


def load_ceval(path: str | pathlib.Path | None = None, *, source: Source | None = None,
               split: str = "val", subjects: Iterable[str] | None = None,
               limit: int | None = None, seed: int = 0,
               hub_id: str = CEVAL_HUB) -> list[Question]:
  """C-Eval (52 subjects; val has answers, test does not). Never shipped: give `path` or use hub.

  Local `path`: a directory holding `{subject}_{split}.csv` (columns id, question, A-D, answer),
  either directly or under `path/{split}/` (the layout of the official zip).
  """
  src = _resolve_source(source, path, packaged=False, name="C-Eval")
  if src == "local":
    root = pathlib.Path(path)
    if (root / split).is_dir():
      root = root / split
    present = sorted(p.name[:-len(f"_{split}.csv")] for p in root.glob(f"*_{split}.csv"))
    if not present:
      raise FileNotFoundError(f"no *_{split}.csv files in {root}")
    known = {s: CEVAL_CATEGORIES.get(s, "unknown") for s in present}
  else:
    known = CEVAL_CATEGORIES
  wanted = _check_subjects(subjects, known, "ceval")
  questions = []
  for subject in wanted:
    if src == "hub":
      rows = _hub_rows(hub_id, subject, split)
    else:
      rows = _read_csv(root / f"{subject}_{split}.csv", ",", "utf-8-sig")
    for i, row in enumerate(rows):
      letter = str(row["answer"]).strip().upper()
      questions.append(Question(
          id=f"ceval/{subject}/{i}", benchmark="ceval", subject=subject, category=known[subject],
          question=str(row["question"]).strip(),
          choices=tuple(str(row[k]).strip() for k in "ABCD"), answer="ABCD".index(letter)))
  return select(questions, limit=limit, seed=seed)


def load_synthetic_docs(*, split: str = "heldout", subjects: Iterable[str] | None = None,
                        limit: int | None = None, seed: int = 0,
                        task_seed: int = 0) -> list[Question]:
  """The synthetic private-document task (``c2cjax.data.synthetic``, default sizes); subjects
  are the attributes asked about. ``context`` holds the document (what the sharer reads)."""
  from c2cjax.data import synthetic  # pylint: disable=import-outside-toplevel
  wanted = set(_check_subjects(subjects, {a: a for a in synthetic.ATTRIBUTES}, "synthetic_docs"))
  questions = [
      Question(id=qa.id, benchmark="synthetic_docs", subject=qa.attribute,
               category=qa.attribute, question=qa.question, choices=qa.choices,
               answer=qa.answer, context=synthetic.context_text(doc))
      for doc, qa in synthetic.questions(split, synthetic.TaskConfig(seed=task_seed))
      if qa.attribute in wanted]
  questions.sort(key=lambda q: q.subject)  # canonical order: subjects sorted, then file order
  return select(questions, limit=limit, seed=seed)


_LOADERS: dict[str, Callable[..., list[Question]]] = {
    "mmlu_redux": load_mmlu_redux, "arc_challenge": load_arc_challenge,
    "openbookqa": load_openbookqa, "ceval": load_ceval,
    "synthetic_docs": load_synthetic_docs}


def load_benchmark(name: str, **kwargs: Any) -> list[Question]:
  """Dispatches to the loader for `name` (one of BENCHMARKS) with the same keyword arguments."""
  if name not in _LOADERS:
    raise ValueError(f"unknown benchmark {name!r}; expected one of {BENCHMARKS}")
  return _LOADERS[name](**kwargs)


def select(questions: Sequence[Question], *, limit: int | None = None,
           seed: int = 0) -> list[Question]:
  """The `limit` questions first in the seeded order, returned in their input order."""
  if limit is None or limit >= len(questions):
    return list(questions)
  if limit < 0:
    raise ValueError(f"limit must be >= 0, got {limit}")
  key = lambda q: hashlib.sha256(f"{seed}:{q.id}".encode()).hexdigest()
  keep = {q.id for q in sorted(questions, key=key)[:limit]}
  return [q for q in questions if q.id in keep]


# --- helpers ---------------------------------------------------------------------------------
def _resolve_source(source, path, *, packaged: bool, name: str = "") -> Source:
  if source is None:
    source = "local" if path is not None else "packaged"
  if source not in ("packaged", "local", "hub"):
    raise ValueError(f"source must be 'packaged', 'local' or 'hub', got {source!r}")
  if source == "packaged" and not packaged:
    raise ValueError(f"{name} is not shipped with c2cjax (its licence, CC BY-NC-SA 4.0, is "
                     "non-commercial): pass path= to a local copy, or source='hub'")
  if source == "local" and path is None:
    raise ValueError("source='local' needs path=")
  if source != "local" and path is not None:
    raise ValueError(f"path= is only read with source='local', not {source!r}")
  return source


def _check_subjects(subjects, known: dict[str, str], benchmark: str) -> list[str]:
  if subjects is None:
    return sorted(known)
  wanted = sorted(set(subjects))
  unknown = [s for s in wanted if s not in known]
  if unknown:
    raise ValueError(f"unknown {benchmark} subjects {unknown}; known: {sorted(known)}")
  return wanted


def _choices(value: Any) -> tuple[str, ...]:
  items = ast.literal_eval(value) if isinstance(value, str) else value
  return tuple(str(c).strip() for c in items)


def _read_csv(file: pathlib.Path, delimiter: str, encoding: str) -> list[dict[str, str]]:
  with open(file, encoding=encoding, newline="") as f:
    return list(csv.DictReader(f, delimiter=delimiter))


def _read_mmlu_csv(file: pathlib.Path, subject: str) -> list[dict[str, str]]:
  """Reads one MMLU-Redux CSV; the delimiter (',' or ';') is read off the header line."""
  raw = file.read_bytes()
  try:
    text = raw.decode("utf-8-sig")
  except UnicodeDecodeError:
    if subject not in _LEGACY_ENCODING:
      raise
    text = raw.decode(_LEGACY_ENCODING[subject])
  header = text.split("\n", 1)[0]
  delimiter = ";" if header.count(";") > header.count(",") else ","
  return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))


def _load_single(benchmark, source, path, subjects, limit, seed, hub_fn,
                 hub_question_key) -> list[Question]:
  """ARC-Challenge / OpenBookQA: one subject, named like the benchmark."""
  src = _resolve_source(source, path, packaged=True)
  _check_subjects(subjects, {benchmark: benchmark}, benchmark)
  if src == "hub":
    rows = [(r[hub_question_key], r["choices"]["text"],
             list(r["choices"]["label"]).index(r["answerKey"])) for r in hub_fn()]
  else:
    file = pathlib.Path(path) if src == "local" else FILES_DIR / benchmark
    if file.is_dir():
      file = file / "test.jsonl"
    with open(file, encoding="utf-8") as f:
      records = [json.loads(line) for line in f if line.strip()]
    rows = [(_strip_question_prefix(r["query"]), r["choices"], int(r["gold"])) for r in records]
  questions = [
      Question(id=f"{benchmark}/{i}", benchmark=benchmark, subject=benchmark, category=benchmark,
               question=str(q).strip(), choices=_choices(c), answer=a)
      for i, (q, c, a) in enumerate(rows)]
  return select(questions, limit=limit, seed=seed)


def _strip_question_prefix(query: str) -> str:
  """llm-foundry stores ARC queries as "Question: ..." (OpenBookQA bare); returns the bare text."""
  query = query.strip()
  return query[len("Question:"):].strip() if query.startswith("Question:") else query


def _hub_rows(hub_id: str, config: str, split: str) -> list[dict[str, Any]]:
  try:
    import datasets  # pylint: disable=g-import-not-at-top  # optional dependency
  except ImportError as e:
    raise HubError(
        "source='hub' needs the Hugging Face `datasets` package (pip install datasets); "
        "without it use source='packaged' or a local path") from e
  try:
    return list(datasets.load_dataset(hub_id, config, split=split))
  except Exception as e:  # network, auth, unknown config: all end the same way for the caller.
    raise HubError(
        f"could not load {hub_id!r} (config {config!r}, split {split!r}) from the hub: "
        f"{type(e).__name__}: {e}. Offline? Use source='packaged' or a local path") from e
