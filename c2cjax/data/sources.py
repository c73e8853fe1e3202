"""Instruction-data sources: TFDS builders read through grain-compatible data sources.

Two TFDS builders, both writing ``array_record`` files (no TensorFlow needed) with
one feature layout, ``{"messages": [{"role", "content"}], "source": str}``, records
kept in upstream file order:

  ``open_hermes25``: OpenHermes-2.5 (the C2C training set), from the Hugging Face
    Hub dataset ``teknium/OpenHermes-2.5`` (file ``openhermes2_5.json``), or from
    that file placed in the TFDS manual directory. Offline it fails with a clear
    error.
  ``offline_instruct``: the instruction files shipped in
    ``c2cjax/data/files/instruct`` (GPTeacher, an Alpaca demo set), one config per
    file plus ``all``; works offline.
  ``synthetic_docs``: the private-document task of :mod:`c2cjax.data.synthetic`
    (configs ``mc``, ``short``, ``all``; splits ``train`` and ``heldout`` with disjoint
    entities and names), built locally; its records add ``sharer_context`` (the
    document, read by the sharer only).

:func:`load_source` prepares a builder once and returns its random-access data
source (``__len__`` / ``__getitem__``), which ``grain.MapDataset.source`` takes.
:func:`split_source` takes the first N records and a seeded held-out split.
"""

import contextlib
import dataclasses
import importlib.resources
import json
import os
import pathlib
from typing import Any, Sequence

from etils import epath
import filelock
import numpy as np
import tensorflow_datasets as tfds

from c2cjax.data import chat, synthetic
from c2cjax.runtime import cache_root

OPENHERMES_REPO = "teknium/OpenHermes-2.5"
OPENHERMES_FILE = "openhermes2_5.json"
INSTRUCT_FILES = {
    "gpteacher_codegen": "gpteacher_codegen.json",
    "gpteacher_roleplay": "gpteacher_roleplay.json",
    "gpteacher_toolformer": "gpteacher_toolformer.json",
    "alpaca_en_demo": "alpaca_en_demo.json",
}


def default_data_dir() -> pathlib.Path:
  """``$C2CJAX_CACHE/tfds`` (default ``~/.cache/c2cjax/tfds``)."""
  return cache_root() / "tfds"


def instruct_file(name: str) -> pathlib.Path:
  """Path of a shipped instruction file (a key of ``INSTRUCT_FILES``)."""
  root = importlib.resources.files("c2cjax.data") / "files" / "instruct"
  return pathlib.Path(str(root / INSTRUCT_FILES[name]))


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "messages": tfds.features.Sequence({"role": tfds.features.Text(),
                                          "content": tfds.features.Text()}),
      "source": tfds.features.Text(),
  })


def _example(messages: list[dict[str, str]], source: str | None) -> dict[str, Any]:
  return {"messages": messages, "source": source or ""}


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the builders here."""

  # TFDS 4.9.x finds a packaged builder's file via the `importlib_resources`
  # backport, which it does not install on Python >= 3.9; name the file directly.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)


class OfflineInstruct(_Builder):
  """The shipped instruction files (GPTeacher MIT, Alpaca demo Apache-2.0)."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=f"{f} only")
                     for n, f in INSTRUCT_FILES.items()] + [
                         tfds.core.BuilderConfig(name="all", description="all files")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=_features(), disable_shuffling=True,
        description="GPTeacher (teknium1/GPTeacher@481075123) and the LLaMA-Factory "
                    "Alpaca demo set (hiyouga/LLaMA-Factory@ff6d4d12) as chat messages.",
        homepage="https://github.com/teknium1/GPTeacher",
        license="GPTeacher: MIT; alpaca_en_demo: Apache-2.0")

  def _split_generators(self, dl_manager):
    del dl_manager
    name = self.builder_config.name
    return {"train": self._generate_examples(list(INSTRUCT_FILES) if name == "all" else [name])}

  def _generate_examples(self, names: Sequence[str]):
    for name in names:
      for i, record in enumerate(json.loads(instruct_file(name).read_text("utf-8"))):
        yield f"{name}/{i:06d}", _example(chat.to_messages(record), name)


def _fetch_openhermes() -> pathlib.Path:
  """Downloads ``openhermes2_5.json`` from the Hub (cached by huggingface_hub)."""
  from huggingface_hub import hf_hub_download  # pylint: disable=import-outside-toplevel
  try:
    return pathlib.Path(hf_hub_download(OPENHERMES_REPO, OPENHERMES_FILE, repo_type="dataset"))
  except Exception as e:  # offline, proxy, gated...: one clear message
    raise RuntimeError(
        f"OpenHermes-2.5 could not be fetched from the Hugging Face Hub ({OPENHERMES_REPO}: "
        f"{type(e).__name__}: {e}). Put {OPENHERMES_FILE} in the TFDS manual directory "
        "(load_source(..., manual_dir=...)), or train offline on the shipped data: "
        "load_source('offline_instruct/all').") from e


class OpenHermes25(_Builder):
  """OpenHermes-2.5 (teknium/OpenHermes-2.5), ~1M conversations, system turns kept."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f"Optional: place {OPENHERMES_FILE} from the Hugging Face dataset {OPENHERMES_REPO} "
      "here; without it the file is downloaded from the Hub.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=_features(), disable_shuffling=True,
        description="OpenHermes-2.5 conversations (system / human / gpt) as chat messages.",
        homepage=f"https://huggingface.co/datasets/{OPENHERMES_REPO}")

  def _split_generators(self, dl_manager):
    try:
      path = pathlib.Path(dl_manager.manual_dir) / OPENHERMES_FILE
    except (AssertionError, ValueError):  # no manual directory
      path = None
    if path is None or not path.is_file():
      path = _fetch_openhermes()
    return {"train": self._generate_examples(path)}

  def _generate_examples(self, path: pathlib.Path):
    with open(path, encoding="utf-8") as f:
      records = json.load(f)
    for i, record in enumerate(records):
      yield i, _example(chat.to_messages(record), record.get("source"))


class SyntheticDocs(_Builder):
  """The synthetic private-document task (``synthetic.TaskConfig()`` sizes)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "short MCQ template; short answers start 'The answer is:'"}
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="mc", description="multiple choice"),
                     tfds.core.BuilderConfig(name="short", description="short answer"),
                     tfds.core.BuilderConfig(name="all", description="both forms")]

  def _info(self) -> tfds.core.DatasetInfo:
    features = dict(_features())
    features["sharer_context"] = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict(features), disable_shuffling=True,
        description="Invented people and facts (c2cjax.data.synthetic); the sharer reads "
                    "the document in sharer_context, the receiver only the question.")

  def _split_generators(self, dl_manager):
    del dl_manager
    name = self.builder_config.name
    forms = ("mc", "short") if name == "all" else (name,)
    return {split: self._generate_examples(split, forms) for split in synthetic.SPLITS}

  def _generate_examples(self, split: str, forms):
    for record in synthetic.records(split, forms=forms):
      yield record["source"], record


SOURCES = (("open_hermes25",) + tuple(f"offline_instruct/{n}" for n in (*INSTRUCT_FILES, "all"))
           + tuple(f"synthetic_docs/{n}" for n in ("mc", "short", "all")))


def load_source(name: str, *, data_dir: str | os.PathLike | None = None,
                manual_dir: str | os.PathLike | None = None, split: str = "train"):
  """Prepares a builder (once) and returns its random-access data source.

  Args:
    name: one of ``SOURCES`` (``"open_hermes25"``, ``"offline_instruct/all"``, ...).
    data_dir: TFDS data directory (default :func:`default_data_dir`).
    manual_dir: directory holding ``openhermes2_5.json`` (OpenHermes only).
    split: a TFDS split, slicing allowed (``"train[:500000]"``).

  Returns:
    A TFDS ``ArrayRecordDataSource``; records are ``{"messages": {"role": [bytes],
    "content": [bytes]}, "source": bytes}`` (:func:`c2cjax.data.chat.to_messages`
    reads them), plus ``"sharer_context": bytes`` for ``synthetic_docs``.
  """
  if name not in SOURCES:
    raise ValueError(f"unknown source {name!r}; expected one of {SOURCES}")
  data_dir = str(data_dir or default_data_dir())
  with _prepare_lock(data_dir, name):  # the builder too: it reads what is prepared
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir else None))
  return builder.as_data_source(split=split)


def _prepare_lock(data_dir: str, name: str):
  """A file lock around preparing ``name`` in a local ``data_dir``: processes sharing the
  folder (several hosts or processes of one run) prepare it once, one after another;
  without it two of them race on TFDS's final rename and one fails. Remote folders
  (``gs://...``) get no lock."""
  if "://" in data_dir:
    return contextlib.nullcontext()
  os.makedirs(data_dir, exist_ok=True)
  return filelock.FileLock(os.path.join(data_dir, name.replace("/", "__") + ".lock"))


@dataclasses.dataclass(frozen=True, eq=False)
class Subset:
  """The records of ``source`` at ``indices`` (a grain ``RandomAccessDataSource``)."""
  source: Any
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int):
    return self.source[int(self.indices[i])]

  def __repr__(self) -> str:
    return f"Subset({len(self)} of {len(self.source)} records)"


def split_source(source, *, max_examples: int | None = None, heldout_fraction: float = 0.01,
                 seed: int = 0) -> tuple[Subset, Subset]:
  """The first ``max_examples`` records, split into (train, held-out) by ``seed``.

  Args:
    source: a random-access source (``__len__`` / ``__getitem__``).
    max_examples: keep only the first N records (None: all), as the paper's
      "first 500k samples of OpenHermes-2.5".
    heldout_fraction: share held out, rounded (at least one record when > 0).
    seed: the permutation that picks the held-out records.

  Returns:
    Disjoint subsets covering the first N records, each in source order.
  """
  if not 0 <= heldout_fraction < 1:
    raise ValueError(f"heldout_fraction must be in [0, 1), got {heldout_fraction}")
  n = len(source) if max_examples is None else min(int(max_examples), len(source))
  k = min(max(round(n * heldout_fraction), 1 if heldout_fraction > 0 else 0), n)
  perm = np.random.default_rng(seed).permutation(n)
  return Subset(source, np.sort(perm[k:])), Subset(source, np.sort(perm[:k]))
