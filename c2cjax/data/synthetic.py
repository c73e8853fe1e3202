"""A synthetic private-document task: facts only a model that reads the document can know.

Invented people with invented names and attributes (so no model knows them from
pretraining) are described in short documents of a few sentences; questions ask about one
of them. The sharer reads the document (``sharer_context``), the receiver only the question,
so anything the receiver gets right beyond chance came through the fused cache.

  ``generate_split(split, config)``: the split's documents, each with its questions.
  ``mc_messages`` / ``short_messages``: one question as a chat training example.

Every question exists in two forms: 4-option multiple choice with the options in the question
(the user turn follows ``MCQ_TEMPLATE``, the reply is the letter) and short answer (the bare
question, the reply is ``"The answer is: {value}"``, so that scoring the four values as
continuations of ``... The answer is:`` reads exactly what training taught). Distractors are values of the same attribute
that the document does *not* mention (``distractors="absent"``, the easy form: reading the
document suffices) or, with ``"present"``, preferably values it gives other people (binding).

Splits ("train", "heldout") are built from disjoint pools of first names, surnames and invented
places and companies, so they share no entity and no invented name; the closed-vocabulary
attributes (professions, colours, pets, instruments) are shared, as the options must be.
Everything is a pure function of ``(split, config)``: the same call gives the same documents
on any machine and Python version (NumPy's seeded PCG64, no hashing of strings).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "heldout")
LETTERS = "ABCD"

# The user turn of the multiple-choice form; the reply is the letter alone.
MCQ_TEMPLATE = "{question}\n{options}\nAnswer with the letter only."
# The short-answer reply starts with this; the value follows after a space.
SHORT_PREFIX = "The answer is:"

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "pr", "r",
           "s", "st", "t", "tr", "v", "z", "sh", "th", "qu", "j", "w", "y")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ai", "ei", "ou", "y")
_CODAS = ("", "", "n", "r", "l", "s", "th", "rk", "nd", "x", "m", "v")
_TOWN_ENDS = ("moor", "vale", "wick", "holm", "ford", "mere", "stead", "crag", "haven", "thorpe")
_COMPANY_ENDS = ("Works", "Guild", "Collective", "Foundry", "Trading", "Mills", "Labs")

# attribute -> (statement, question, closed vocabulary or None for invented values).
ATTRIBUTES: dict[str, tuple[str, str, tuple[str, ...] | None]] = {
    "town": ("{name} lives in the town of {value}.", "In which town does {name} live?", None),
    "company": ("{name} works for {value}.", "Which company does {name} work for?", None),
    "profession": ("{name} works as a {value}.", "What is {name}'s profession?",
                   ("baker", "pilot", "carpenter", "librarian", "nurse", "architect",
                    "fisherman", "jeweller", "tailor", "surveyor", "beekeeper", "potter",
                    "translator", "locksmith", "gardener", "astronomer")),
    "color": ("{name}'s favourite colour is {value}.", "What is {name}'s favourite colour?",
              ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey",
               "brown", "pink", "turquoise")),
    "pet": ("{name} keeps a {value} as a pet.", "What pet does {name} keep?",
            ("cat", "dog", "parrot", "rabbit", "tortoise", "goldfish", "hamster", "ferret",
             "lizard", "canary", "goat", "snake")),
    "instrument": ("{name} plays the {value}.", "Which instrument does {name} play?",
                   ("violin", "piano", "flute", "trumpet", "harp", "cello", "drums", "guitar",
                    "clarinet", "accordion", "oboe", "banjo")),
}


@dataclasses.dataclass(frozen=True)
class TaskConfig:
  """Sizes of the task. Hashable.

  Attributes:
    seed: everything derives from it (pools, documents, questions).
    train_docs, heldout_docs: documents per split.
    entities_per_doc: people described in one document.
    attributes_per_entity: facts given per person (distinct attributes).
    questions_per_doc: questions per document, each about a different person.
    distractors: "absent" (values the document does not mention) or "present" (values it
      gives other people first, then absent ones).
    pool_size: first names, surnames, towns and companies generated per split.
  """

  seed: int = 0
  train_docs: int = 2000
  heldout_docs: int = 200
  entities_per_doc: int = 3
  attributes_per_entity: int = 2
  questions_per_doc: int = 3
  distractors: str = "absent"
  pool_size: int = 400

  def __post_init__(self):
    if self.distractors not in ("absent", "present"):
      raise ValueError(f"distractors must be 'absent' or 'present', got {self.distractors!r}")
    if not 1 <= self.attributes_per_entity <= len(ATTRIBUTES):
      raise ValueError(f"attributes_per_entity must be in [1, {len(ATTRIBUTES)}]")
    if not 1 <= self.questions_per_doc <= self.entities_per_doc:
      raise ValueError("questions_per_doc must be in [1, entities_per_doc]")
    smallest = min(len(v) for _, _, v in ATTRIBUTES.values() if v is not None)
    if self.entities_per_doc + 3 > smallest:
      raise ValueError(f"entities_per_doc + 3 distractors must fit {smallest} values")
    if min(self.train_docs, self.heldout_docs) < 0 or self.pool_size < 4 * self.entities_per_doc:
      raise ValueError("document counts must be >= 0 and pool_size large enough")

  def num_docs(self, split: str) -> int:
    return {"train": self.train_docs, "heldout": self.heldout_docs}[_check_split(split)]


@dataclasses.dataclass(frozen=True)
class Entity:
  name: str
  facts: tuple[tuple[str, str], ...]  # (attribute, value) pairs, in document order


@dataclasses.dataclass(frozen=True)
class QA:
  """One question about one entity of a document, in both forms.

  Attributes:
    id: "synthetic_docs/{split}/{doc}/{k}".
    attribute: the attribute asked about (a key of ``ATTRIBUTES``).
    entity: the person's name.
    question: the bare question ("What is X's profession?").
    answer_text: the value (the short-answer reply).
    choices: four options, the answer among them exactly once.
    answer: index of the answer in ``choices``.
  """

  id: str
  attribute: str
  entity: str
  question: str
  answer_text: str
  choices: tuple[str, ...]
  answer: int

  @property
  def answer_letter(self) -> str:
    return LETTERS[self.answer]


@dataclasses.dataclass(frozen=True)
class Document:
  id: str
  split: str
  text: str
  entities: tuple[Entity, ...]
  questions: tuple[QA, ...]


def _check_split(split: str) -> str:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  return split


# --- name pools ------------------------------------------------------------------------------
def _word(rng: np.random.Generator, syllables: int) -> str:
  parts = [_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
           + _CODAS[rng.integers(len(_CODAS))] for _ in range(syllables)]
  return "".join(parts).capitalize()


def _unique(rng, n: int, make, taken: set[str]) -> list[str]:
  out = []
  while len(out) < n:
    w = make(rng)
    if w not in taken and 4 <= len(w) <= 14:
      taken.add(w)
      out.append(w)
  return out


@dataclasses.dataclass(frozen=True)
class Pools:
  """One split's first names, surnames, towns and companies (disjoint across splits)."""
  first: tuple[str, ...]
  last: tuple[str, ...]
  town: tuple[str, ...]
  company: tuple[str, ...]


@functools.lru_cache(maxsize=8)
def name_pools(config: TaskConfig) -> dict[str, Pools]:
  """Split -> its pools. Drawn together so that no word is in two splits (or two pools)."""
  rng = np.random.default_rng([config.seed, 7])
  taken: set[str] = set()
  n = config.pool_size
  kinds = {
      "first": lambda r: _word(r, 2),
      "last": lambda r: _word(r, 2 + int(r.integers(2))),
      "town": lambda r: _word(r, 1 + int(r.integers(2))) + _TOWN_ENDS[r.integers(len(_TOWN_ENDS))],
      "company": lambda r: (_word(r, 2) + " " + _COMPANY_ENDS[r.integers(len(_COMPANY_ENDS))]),
  }
  drawn = {k: _unique(rng, n * len(SPLITS), make, taken) for k, make in kinds.items()}
  return {split: Pools(**{k: tuple(words[i * n:(i + 1) * n]) for k, words in drawn.items()})
          for i, split in enumerate(SPLITS)}


# --- documents -------------------------------------------------------------------------------
def _values(attribute: str, pools: Pools) -> tuple[str, ...]:
  closed = ATTRIBUTES[attribute][2]
  return closed if closed is not None else getattr(pools, attribute)


def _document(rng: np.random.Generator, split: str, index: int, pools: Pools,
              names: list[str], config: TaskConfig) -> Document:
  attrs = list(ATTRIBUTES)
  used: dict[str, set[str]] = {a: set() for a in attrs}
  entities = []
  for name in names:
    chosen = [attrs[i] for i in rng.permutation(len(attrs))[:config.attributes_per_entity]]
    facts = []
    for a in chosen:  # values distinct within the document, per attribute
      options = [v for v in _values(a, pools) if v not in used[a]]
      value = options[rng.integers(len(options))]
      used[a].add(value)
      facts.append((a, value))
    entities.append(Entity(name, tuple(facts)))
  # Sentences: each entity's facts in order, entities interleaved fact by fact.
  sentences = [ATTRIBUTES[a][0].format(name=e.name, value=v)
               for k in range(config.attributes_per_entity)
               for e in entities for a, v in [e.facts[k]]]
  doc_id = f"synthetic_docs/{split}/{index}"
  questions = []
  for k, e_idx in enumerate(rng.permutation(len(entities))[:config.questions_per_doc]):
    e = entities[e_idx]
    a, value = e.facts[rng.integers(len(e.facts))]
    questions.append(_qa(rng, f"{doc_id}/{k}", e.name, a, value, used[a], pools, config))
  return Document(doc_id, split, " ".join(sentences), tuple(entities), tuple(questions))


def _qa(rng, qid, name, attribute, value, in_doc: set[str], pools, config) -> QA:
  absent = [v for v in _values(attribute, pools) if v not in in_doc]
  present = [v for v in sorted(in_doc) if v != value]
  picks = []
  if config.distractors == "present":
    picks = [present[i] for i in rng.permutation(len(present))[:3]]
  rest = [absent[i] for i in rng.permutation(len(absent))[:3 - len(picks)]]
  choices = picks + rest + [value]
  order = rng.permutation(4)
  choices = tuple(choices[i] for i in order)
  return QA(qid, attribute, name, ATTRIBUTES[attribute][1].format(name=name), value, choices,
            int(np.flatnonzero(order == 3)[0]))


def generate_split(split: str, config: TaskConfig = TaskConfig()) -> list[Document]:
  """The split's documents in order (deterministic in ``(split, config)``)."""
  _check_split(split)
  pools = name_pools(config)[split]
  n_docs = config.num_docs(split)
  need = n_docs * config.entities_per_doc
  side = math.isqrt(need) + 1
  if side > config.pool_size:
    raise ValueError(f"{need} entities need pool_size >= {side}")
  rng = np.random.default_rng([config.seed, SPLITS.index(split), 11])
  # Unique full names: distinct (first, last) cells of the pool grid.
  cells = rng.choice(len(pools.first) * len(pools.last), size=need, replace=False)
  names = [f"{pools.first[c // len(pools.last)]} {pools.last[c % len(pools.last)]}"
           for c in cells]
  docs = []
  for i in range(n_docs):
    group = names[i * config.entities_per_doc:(i + 1) * config.entities_per_doc]
    docs.append(_document(rng, split, i, pools, group, config))
  return docs


def questions(split: str, config: TaskConfig = TaskConfig()) -> list[tuple[Document, QA]]:
  """Every (document, question) pair of the split, in order."""
  return [(d, q) for d in generate_split(split, config) for q in d.questions]


# --- chat examples ---------------------------------------------------------------------------
def format_options(choices: Sequence[str]) -> str:
  return "\n".join(f"{l}. {c}" for l, c in zip(LETTERS, choices))


def mc_user(qa: QA, template: str = MCQ_TEMPLATE) -> str:
  """The multiple-choice user turn (as ``c2cjax.evaluation.prompts.mcq_prompt`` renders it
  with ``PromptConfig(mcq=template)``)."""
  return template.format(question=qa.question, options=format_options(qa.choices),
                         letters="/".join(LETTERS))


def mc_messages(qa: QA, template: str = MCQ_TEMPLATE) -> list[dict[str, str]]:
  return [{"role": "user", "content": mc_user(qa, template)},
          {"role": "assistant", "content": qa.answer_letter}]


def short_messages(qa: QA) -> list[dict[str, str]]:
  return [{"role": "user", "content": qa.question},
          {"role": "assistant", "content": f"{SHORT_PREFIX} {qa.answer_text}"}]


def cloze_template(tokenizer) -> str:
  """The short-answer prompt as an evaluation cloze template (``PromptConfig.cloze``, field
  ``{question}``): the chat-rendered question, up to the assistant's turn. ``SHORT_PREFIX``
  opens the reply (``PromptConfig.reply_prefix``: C2C reads it unfused, as in training);
  each option is then scored as the continuation ``" {value}"``, as the training reply
  continues."""
  text = tokenizer.apply_chat_template([{"role": "user", "content": "\x00"}], tokenize=False,
                                       add_generation_prompt=True)
  return text.replace("{", "{{").replace("}", "}}").replace("\x00", "{question}")


def context_text(doc: Document) -> str:
  """What the sharer reads before the prompt."""
  return f"Document:\n{doc.text}\n\n"


def records(split: str, config: TaskConfig = TaskConfig(), forms: Sequence[str] = ("mc", "short")):
  """Training records ``{"messages", "source", "sharer_context"}``, one per question and form."""
  unknown = set(forms) - {"mc", "short"}
  if unknown or not forms:
    raise ValueError(f"forms must be a non-empty subset of ('mc', 'short'), got {forms}")
  out = []
  for doc, qa in questions(split, config):
    for form in forms:
      messages = mc_messages(qa) if form == "mc" else short_messages(qa)
      out.append({"messages": messages, "source": f"{qa.id}/{form}",
                  "sharer_context": context_text(doc)})
  return out
