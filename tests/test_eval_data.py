"""Benchmark loaders, prompts, the answer parser and the report (c2cjax.evaluation)."""

from __future__ import annotations

import json
import pathlib
import sys
import types

import pytest

from c2cjax.evaluation import datasets, parse, prompts, report
from c2cjax.evaluation.datasets import Question
from c2cjax.evaluation.report import Record

CEVAL_DIR = pathlib.Path("/work/shared/data/ceval")  # test-only: never read at runtime.


@pytest.fixture(scope="module")
def mmlu():
  return datasets.load_mmlu_redux()


# --- loaders ---------------------------------------------------------------------------------
def test_mmlu_redux_packaged(mmlu):
  assert len(mmlu) == 5700
  subjects = {q.subject for q in mmlu}
  assert len(subjects) == 57 and subjects == set(datasets.MMLU_CATEGORIES)
  assert {q.category for q in mmlu} == {"STEM", "humanities", "social sciences", "other"}
  assert all(len(q.choices) == 4 and 0 <= q.answer < 4 for q in mmlu)
  assert len({q.id for q in mmlu}) == 5700
  # A semicolon-separated file, read field by field.
  first = next(q for q in mmlu if q.id == "mmlu_redux/anatomy/0")
  assert first.question.startswith("Which of the following is a disorder characterized")
  assert first.choices == ("Dyslexia", "Epilepsy", "Hydrocephalus", "Narcolepsy")
  assert first.answer == 3 and first.answer_letter == "D" and first.error_type == "ok"
  assert mmlu[0].subject == "abstract_algebra"  # canonical order: subjects sorted


def test_mmlu_redux_legacy_encoded_file():
  qs = datasets.load_mmlu_redux(subjects=["moral_scenarios"])
  assert len(qs) == 100
  text = " ".join(q.question + " ".join(q.choices) for q in qs)
  assert "sister\u2019s head" in text and "\u00d5" not in text


def test_mmlu_redux_ok_only(mmlu):
  ok = datasets.load_mmlu_redux(ok_only=True)
  assert len(ok) == 5330 < len(mmlu)
  assert {q.error_type for q in ok} == {"ok"}
  assert {"wrong_groundtruth", "bad_question_clarity"} <= {q.error_type for q in mmlu}
  assert datasets.normalize_error_type(" Wrong Groundtruth ") == "wrong_groundtruth"


def test_arc_and_openbookqa_packaged():
  arc, obqa = datasets.load_arc_challenge(), datasets.load_openbookqa()
  assert len(arc) == 1172 and len(obqa) == 500
  assert arc[0].question.startswith("An astronomer observes that a planet rotates faster")
  assert arc[0].answer == 2 and arc[0].id == "arc_challenge/0"
  assert not any(q.question.startswith("Question") for q in arc + obqa)
  assert obqa[2].question == "Predators eat" and obqa[2].choices[obqa[2].answer] == "bunnies"
  assert {q.subject for q in arc} == {"arc_challenge"}


def test_limit_is_seeded_stable_and_nested():
  five = datasets.load_arc_challenge(limit=5)
  ten = datasets.load_arc_challenge(limit=10)
  assert len(five) == 5 and five == datasets.load_arc_challenge(limit=5)
  assert set(q.id for q in five) < set(q.id for q in ten)
  assert five != datasets.load_arc_challenge(limit=5, seed=1)
  assert five != datasets.load_arc_challenge()[:5]  # shuffled selection, not the file head
  rows = [int(q.id.split("/")[1]) for q in ten]
  assert rows == sorted(rows)  # returned in canonical order
  picked = datasets.load_mmlu_redux(subjects=["virology", "anatomy"], limit=7)
  assert len(picked) == 7 and {q.subject for q in picked} <= {"virology", "anatomy"}
  assert datasets.load_benchmark("openbookqa", limit=3) == datasets.load_openbookqa(limit=3)


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown mmlu_redux subjects"):
    datasets.load_mmlu_redux(subjects=["anatomyy"])
  with pytest.raises(ValueError, match="non-commercial"):
    datasets.load_ceval()
  with pytest.raises(ValueError, match="unknown benchmark"):
    datasets.load_benchmark("mmlu")
  with pytest.raises(ValueError, match="only read with source='local'"):
    datasets.load_openbookqa(source="packaged", path="x")


def test_local_path_reads_same_layout(tmp_path):
  src = datasets.FILES_DIR / "openbookqa" / "test.jsonl"
  (tmp_path / "test.jsonl").write_bytes(src.read_bytes())
  assert datasets.load_openbookqa(path=tmp_path) == datasets.load_openbookqa()


def test_ceval_from_a_directory(tmp_path):
  (tmp_path / "val").mkdir()
  (tmp_path / "val" / "logic_val.csv").write_text(
      "id,question,A,B,C,D,answer\n0,以下哪项正确？,甲,乙,丙,丁,C\n1,\"a, b\",1,2,3,4,A\n",
      encoding="utf-8")
  qs = datasets.load_ceval(tmp_path)
  assert [q.id for q in qs] == ["ceval/logic/0", "ceval/logic/1"]
  assert qs[0].choices == ("甲", "乙", "丙", "丁") and qs[0].answer == 2
  assert qs[0].category == "Humanities" and qs[1].question == "a, b"


@pytest.mark.skipif(not CEVAL_DIR.is_dir(), reason="no local C-Eval copy")
def test_ceval_real_copy():
  qs = datasets.load_ceval(CEVAL_DIR)
  assert len(qs) == 1346 and len({q.subject for q in qs}) == 52
  assert {q.category for q in qs} == {"STEM", "Social Science", "Humanities", "Other"}
  assert len(datasets.load_ceval(CEVAL_DIR, split="dev")) == 260


def test_hub_without_datasets_package(monkeypatch):
  monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
  with pytest.raises(datasets.HubError, match="pip install datasets"):
    datasets.load_arc_challenge(source="hub")


def _fake_hub(monkeypatch, load_dataset):
  monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_hub_rows_are_converted(monkeypatch):
  calls = []

  def load_dataset(hub_id, config, split):
    calls.append((hub_id, config, split))
    if hub_id == datasets.ARC_CHALLENGE_HUB:
      return [{"id": "x", "question": "Q1?", "answerKey": "3",
               "choices": {"text": ["a", "b", "c", "d"], "label": ["1", "2", "3", "4"]}}]
    if hub_id == datasets.OPENBOOKQA_HUB:
      return [{"id": "y", "question_stem": "Stem", "answerKey": "B",
               "choices": {"text": ["a", "b", "c", "d"], "label": ["A", "B", "C", "D"]}}]
    if hub_id == datasets.MMLU_REDUX_HUB:
      return [{"question": "M?", "choices": ["w", "x", "y", "z"], "answer": 1,
               "error_type": "OK"}]
    return [{"id": 0, "question": "C?", "A": "1", "B": "2", "C": "3", "D": "4", "answer": "D"}]

  _fake_hub(monkeypatch, load_dataset)
  assert datasets.load_arc_challenge(source="hub")[0].answer == 2
  assert datasets.load_openbookqa(source="hub")[0].question == "Stem"
  mmlu = datasets.load_mmlu_redux(source="hub", subjects=["virology"])
  assert mmlu == [Question("mmlu_redux/virology/0", "mmlu_redux", "virology", "other", "M?",
                           ("w", "x", "y", "z"), 1, "ok")]
  assert datasets.load_ceval(source="hub", subjects=["law"])[0].answer == 3
  assert calls == [("allenai/ai2_arc", "ARC-Challenge", "test"),
                   ("allenai/openbookqa", "main", "test"),
                   ("edinburgh-dawg/mmlu-redux-2.0", "virology", "test"),
                   ("ceval/ceval-exam", "law", "val")]


def test_hub_failure_names_the_dataset(monkeypatch):
  def load_dataset(*args, **kwargs):
    raise ConnectionError("no route to host")

  _fake_hub(monkeypatch, load_dataset)
  with pytest.raises(datasets.HubError, match="allenai/openbookqa.*no route to host"):
    datasets.load_openbookqa(source="hub")


# --- prompts ---------------------------------------------------------------------------------
Q = Question("t/0", "t", "t", "t", "What is 2+2?", ("3", "4", "5", "22"), 1)
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}"
            "{% if enable_thinking is defined %}THINK={{ enable_thinking }}{% endif %}")


def _tokenizer(chat_template):
  from tokenizers import Tokenizer, models  # pylint: disable=g-import-not-at-top
  from transformers import PreTrainedTokenizerFast  # pylint: disable=g-import-not-at-top
  tok = PreTrainedTokenizerFast(
      tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
      unk_token="<unk>")
  tok.chat_template = chat_template
  return tok


def test_mcq_prompt_chat_template():
  text = prompts.mcq_prompt(Q, _tokenizer(TEMPLATE))
  assert text.startswith("<|user|>Answer the following multiple-choice question.")
  assert "What is 2+2?\n\nOptions:\nA. 3\nB. 4\nC. 5\nD. 22\n\n" in text
  assert "one of A/B/C/D" in text
  assert text.endswith("<|end|><|assistant|>THINK=False")
  thinking = prompts.PromptConfig(enable_thinking=True, system="Be brief.")
  text = prompts.mcq_prompt(Q, _tokenizer(TEMPLATE), thinking)
  assert text.startswith("<|system|>Be brief.<|end|><|user|>") and text.endswith("THINK=True")
  plain_template = TEMPLATE.split("{% if enable_thinking")[0]
  assert prompts.mcq_prompt(Q, _tokenizer(plain_template)).endswith("<|assistant|>")


def test_mcq_prompt_fallback_without_template():
  expected = "Question: What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:"
  assert prompts.mcq_prompt(Q) == expected
  assert prompts.mcq_prompt(Q, _tokenizer(None)) == expected
  assert prompts.t2t_receiver_prompt(Q, " Add. ") == "Background: Add.\n\n" + expected


def test_format_options_and_cloze():
  assert prompts.format_options(["x", "y", "z"]) == "A. x\nB. y\nC. z"
  assert prompts.cloze_prompt(Q) == ("Question: What is 2+2?\nAnswer:", (" 3", " 4", " 5", " 22"))
  with pytest.raises(ValueError):
    prompts.letters(0)


def test_t2t_prompts():
  tok = _tokenizer(TEMPLATE)
  sharer = prompts.background_prompt(Q, tok)
  assert "What is 2+2?" in sharer and "D. 22" in sharer
  assert "Do not say which option is correct" in sharer and sharer.startswith("<|user|>")
  receiver = prompts.t2t_receiver_prompt(Q, "Two plus two is four.", tok)
  assert receiver.index("Two plus two is four.") < receiver.index("What is 2+2?")
  assert prompts.background_prompt(Q).startswith("Question: What is 2+2?\nA. 3")


# --- parser ----------------------------------------------------------------------------------
ABCD = ("w", "x", "y", "z")
WORDS = ("A cat is a mammal", "Paris", "Paris, Texas", "The sun")
PARSE_CASES = [
    ("Answer: B", ABCD, 1),
    ("(b)", ABCD, 1),
    ("B.", ABCD, 1),
    ("The answer is C", ABCD, 2),
    ("**D**", ABCD, 3),
    ("   \n B", ABCD, 1),
    ("The correct answer is: (B)", ABCD, 1),
    ("The correct answer is **C**.", ABCD, 2),
    ('The answer is "B"', ABCD, 1),
    ("Answer: [D]", ABCD, 3),
    ("answer: b", ABCD, 1),
    ("The final answer: d", ABCD, 3),
    ("\\boxed{C}", ABCD, 2),
    ("答案：B", ABCD, 1),
    ("答案是C", ABCD, 2),
    ("I choose B", ABCD, 1),
    ("The best option is D", ABCD, 3),
    ("c) y", ABCD, 2),
    ("B because x is right", ABCD, 1),
    ("<think>It is not B, maybe A.</think>\nThe answer is D", ABCD, 3),
    ("Option C is wrong; the answer is B.", ABCD, 1),
    ("The answer is B. Option D is a distractor.", ABCD, 1),
    ("A. w\nB. x\nAnswer: C", ABCD, 2),
    ("I think it's C", ABCD, 2),
    ("Between A and C, C is better.\nC", ABCD, 2),
    ("A is correct", ABCD, 0),
    # Option text, case/space-insensitive; the longer of nested options wins.
    ("paris", WORDS, 1),
    ("  PARIS,   texas ", WORDS, 2),
    ("The correct answer is The Sun.", WORDS, 3),
    ("a cat is a mammal", WORDS, 0),
    ("-1", ("0", "1", "-1", "12"), 2),
    ("The answer is -1", ("0", "1", "-1", "12"), 2),
    ("A and B", ("x", "y", "z", "A and B"), 3),
    ("Sc ≡ Ej", ("Cs ⊃ Ej", "Sc ≡ Ej", "sC ≡ eJ", "Sx ≡ Jy"), 1),
    # The article "A" is not option A when something better is present.
    ("A DNA sequence that can move.", ("A DNA sequence that can move", "RNA", "x", "y"), 0),
    ("It is a DNA sequence that moves", ("RNA", "A DNA sequence that moves", "x", "y"), 1),
    ("A cat is a mammal. The answer is B", WORDS, 1),
    ("A good guess would be (c)", ABCD, 2),
    # Unparsable.
    ("A cat is a mammal", ABCD, None),
    ("The answer is a cat", ABCD, None),
    ("A. w\nB. x\nC. y\nD. z", ABCD, None),
    ("The answer is not A, it's B", ABCD, None),
    ("I don't know", ABCD, None),
    ("E.", ABCD, None),
    ("", ABCD, None),
]


@pytest.mark.parametrize("text,choices,expected", PARSE_CASES)
def test_parse_answer(text, choices, expected):
  assert parse.parse_answer(text, choices) == expected


def test_parse_answer_more_options():
  ten = tuple("abcdefghij")
  assert parse.parse_answer("The answer is J", ten) == 9
  assert parse.parse_answer("I believe it is H", ten) == 7  # "I" is a pronoun here


# --- report ----------------------------------------------------------------------------------
def _toy_records():
  def rec(system, bench, cat, correct, parsed, t, n):
    return Record(system, bench, f"{cat}_s", cat, correct, parsed, t, n)
  return [
      rec("receiver", "b1", "X", True, True, 1.0, 10),
      rec("receiver", "b1", "X", True, True, 2.0, 20),
      rec("receiver", "b1", "Y", False, True, 3.0, 30),
      rec("receiver", "b1", "Y", False, False, 4.0, 40),
      *[rec("c2c", "b1", "X", True, True, 0.5, 5) for _ in range(10)],
      *[rec("c2c", "b2", "X", False, True, 0.5, 5) for _ in range(10)],
  ]


def test_wilson_interval_reference_values():
  lo, hi = report.wilson_interval(2, 4)
  assert lo == pytest.approx(0.1500, abs=1e-4) and hi == pytest.approx(0.8500, abs=1e-4)
  assert report.wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
  assert report.wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)


def test_summary_numbers():
  s = report.summarize(_toy_records())
  assert s["benchmarks"] == ["b1", "b2"] and s["systems"] == ["receiver", "c2c"]
  o = s["results"]["b1"]["receiver"]["overall"]
  assert (o["n"], o["correct"], o["accuracy"], o["unparsable"]) == (4, 2, 0.5, 1)
  assert o["unparsable_rate"] == 0.25
  assert o["ci95"] == [pytest.approx(0.15, abs=1e-4), pytest.approx(0.85, abs=1e-4)]
  assert o["time_s"] == {"mean": 2.5, "p50": 2.5, "p95": 3.85, "total": 10.0}
  assert o["tokens_generated"] == {"mean": 25.0, "total": 100}
  cats = s["results"]["b1"]["receiver"]["by_category"]
  assert (cats["X"]["accuracy"], cats["Y"]["accuracy"]) == (1.0, 0.0)
  assert list(s["results"]["b1"]["receiver"]["by_subject"]) == ["X_s", "Y_s"]
  assert "receiver" not in s["results"]["b2"]
  assert s["results"]["b2"]["c2c"]["overall"]["ci95"][1] == pytest.approx(0.2775, abs=1e-4)


def test_markdown_table():
  md = report.markdown(report.summarize(_toy_records()))
  assert "| receiver | 4 | 50.0 (15.0-85.0) | 25.0% | 2.500 | 2.500 | 3.850 | 25.0 |" in md
  assert "| c2c | 10 | 100.0 (72.2-100.0) | 0.0% | 0.500 | 0.500 | 0.500 | 5.0 |" in md
  assert "| category | receiver | c2c |" in md and "| Y | 0.0 (0.0-65.8) | - |" in md


def test_mcnemar_exact_reference_values():
  assert report.mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
  assert report.mcnemar_exact(5, 5) == 1.0 and report.mcnemar_exact(0, 0) == 1.0
  assert report.mcnemar_exact(3, 7) == pytest.approx(0.34375)  # 2 * P(X <= 3), X ~ B(10, .5)
  p = report.mcnemar_exact(600, 400)  # no underflow at large n; chi-square gives ~2.5e-10
  assert 1e-11 < p < 1e-8


def test_paired_comparison_joins_questions_by_id():
  def rec(system, qid, correct):
    return Record(system, "b", "s", "c", correct, True, 1.0, 0, question_id=qid)
  base = [True, True, False, False, True, False]
  other = [True, False, True, True, True, True]
  records = ([rec("receiver", f"q{i}", c) for i, c in enumerate(base)] +
             [rec("c2c", f"q{i}", c) for i, c in enumerate(other)] +
             [rec("c2c", "only-c2c", True)])  # no receiver answer: not paired
  s = report.summarize(records)
  p = s["paired"]["results"]["b"]["c2c"]
  assert (p["n"], p["wins"], p["losses"]) == (6, 3, 1)
  assert p["diff"] == pytest.approx(2 / 6, abs=1e-6) and p["p"] == pytest.approx(0.625)
  assert "receiver" not in s["paired"]["results"]["b"]
  md = report.markdown(s)
  assert "Paired against receiver" in md and "| c2c | 6 | +33.3 | 3 | 1 | 0.62 |" in md
  # Records without question ids (the toy ones) are not paired, and no table is written.
  toy = report.summarize(_toy_records())
  assert toy["paired"]["results"] == {} and "Paired" not in report.markdown(toy)


def test_write_report_files_are_deterministic(tmp_path):
  a = report.write_report(_toy_records(), tmp_path / "a")
  b = report.write_report(_toy_records(), tmp_path / "b")
  for kind in ("json", "markdown", "chart"):
    assert a[kind].read_bytes() == b[kind].read_bytes(), kind
  assert a["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and a["chart"].stat().st_size > 1000
  assert json.loads(a["json"].read_text())["ci_method"].startswith("Wilson")


def test_records_roundtrip_and_validation(tmp_path):
  report.save_records(_toy_records(), tmp_path / "r.jsonl")
  assert report.load_records(tmp_path / "r.jsonl") == _toy_records()
  with pytest.raises(ValueError, match="unparsable"):
    Record("s", "b", "x", "y", correct=True, parsed=False, time_s=1.0, tokens_generated=1)
