"""The release scheme's ids and masks for one tokenizer pair: :class:`ReleaseAligner`
renders both sides, aligns them section by section and builds the data path's inputs
(prompts and training examples), following the rules in :mod:`c2cjax.sections.rules`."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import numpy as np

from c2cjax.sections.rules import (STRATEGIES, Section, SectionAlignment, content_spans,
                                   pad_id, render, section_ranges, shared_vocab,
                                   token_ranges)


@dataclasses.dataclass(frozen=True, eq=False)
class ReleaseAligner:
  """The release scheme for one receiver / sharer tokenizer pair (host side, numpy).

  Attributes:
    receiver, sharer: HF fast tokenizers (offsets needed).
    strategy: "first" or "longest" (see :mod:`c2cjax.sections.rules`).
    sections: align by sections (the release's aligner); False: the sharer reads the
      receiver's ids (the release without its aligner); None: sections unless the two
      tokenizers share one vocabulary model (:func:`shared_vocab`).
  """
  receiver: Any
  sharer: Any
  strategy: str = "first"
  sections: bool | None = None

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {STRATEGIES}")
    for role, tok in (("receiver", self.receiver), ("sharer", self.sharer)):
      if not getattr(tok, "is_fast", False):
        raise TypeError(f"the {role} tokenizer ({type(tok).__name__}) is not a fast "
                        "tokenizer; the release scheme needs its character offsets")
    if self.sections is None:
      object.__setattr__(self, "sections", not shared_vocab(self.receiver, self.sharer))
    object.__setattr__(self, "_cache", {})

  @property
  def sharer_pad_id(self) -> int:
    return pad_id(self.sharer)

  @property
  def receiver_pad_id(self) -> int:
    return pad_id(self.receiver)

  @functools.cached_property
  def _specials(self) -> tuple[frozenset, dict[int, int | None]]:
    r, s = self.receiver, self.sharer
    roles = ((pad_id(r), pad_id(s)), (r.eos_token_id, s.eos_token_id),
             (r.bos_token_id, s.bos_token_id), (r.unk_token_id, s.unk_token_id))
    table = {}
    for rid, sid in roles:  # a later role overwrites an earlier one with the same id
      if rid is not None:
        table[int(rid)] = sid
    return frozenset(int(i) for i in r.all_special_ids), table

  def _fallback(self) -> int:
    return int(self.sharer.unk_token_id or 0)

  def _decode(self, tokenizer, ids: Sequence[int]) -> list[str]:
    return [tokenizer.decode([int(i)], skip_special_tokens=False,
                             clean_up_tokenization_spaces=False) for i in ids]

  def _map_one(self, rid: int, text: str, candidates: list[int]) -> int:
    specials, table = self._specials
    if rid in specials:
      if table.get(rid) is not None:
        return int(table[rid])
      sid = self.sharer.convert_tokens_to_ids(text)
      if sid is not None and sid != self.sharer.unk_token_id:
        return int(sid)
      return self._fallback()
    if not candidates:
      return self._fallback()
    if self.strategy == "first" or len(candidates) == 1:
      return int(candidates[0])
    lengths = [len(t) for t in self._decode(self.sharer, candidates)]
    best = 0
    for i, n in enumerate(lengths):  # strictly longer wins: the earliest on ties
      if n > lengths[best]:
        best = i
    return int(candidates[best])

  def token_map(self, receiver_ids: Sequence[int]) -> np.ndarray:
    """One sharer id per receiver id [N] int32 (the message-section rule, memoised)."""
    ids = [int(i) for i in np.asarray(receiver_ids).reshape(-1)]
    cache = self._cache
    new = sorted(set(i for i in ids if i not in cache))
    if new:
      texts = self._decode(self.receiver, new)
      enc = self.sharer(texts, add_special_tokens=False)["input_ids"]
      for rid, text, cand in zip(new, texts, enc):
        cache[rid] = self._map_one(rid, text, list(cand))
    return np.asarray([cache[i] for i in ids], np.int32).reshape(-1)

  def align(self, messages: Sequence[Mapping[str, str]], mode: str = "generate"
            ) -> SectionAlignment:
    """Both renderings of ``messages`` (``mode`` as in :func:`render`), aligned."""
    texts, encs, ranges = [], [], []
    for tok in (self.receiver, self.sharer):
      text = render(tok, messages, mode)
      enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
      ids = np.asarray(enc["input_ids"], np.int32).reshape(-1)
      offs = np.asarray(enc["offset_mapping"], np.int64).reshape(-1, 2)
      texts.append(text)
      encs.append(ids)
      ranges.append(section_ranges(len(ids), token_ranges(offs, content_spans(text, messages))))
    rs, ss = ranges
    if [k for k, _, _ in rs] != [k for k, _, _ in ss]:
      raise ValueError(
          f"the receiver's and the sharer's chat templates give different sections "
          f"({[k for k, _, _ in rs]} vs {[k for k, _, _ in ss]}); the release scheme cannot "
          "align them (a sharer template that drops system messages, or has nothing after "
          "the last message, e.g. the release's default template for a tokenizer without one)")
    rpad, spad = self.receiver_pad_id, self.sharer_pad_id
    out = {k: [] for k in ("r", "s", "rp", "sp", "m")}
    sections = []
    for (kind, r0, r1), (_, s0, s1) in zip(rs, ss):
      start = sum(len(x) for x in out["r"])
      if kind == "template":
        n = max(r1 - r0, s1 - s0)
        out["r"].append(np.concatenate([encs[0][r0:r1], np.full(n - (r1 - r0), rpad, np.int32)]))
        out["s"].append(np.concatenate([encs[1][s0:s1], np.full(n - (s1 - s0), spad, np.int32)]))
        out["rp"].append(np.arange(n) >= r1 - r0)
        out["sp"].append(np.arange(n) >= s1 - s0)
        out["m"].append(np.zeros(n, bool))
      else:
        n = r1 - r0
        out["r"].append(encs[0][r0:r1])
        out["s"].append(self.token_map(encs[0][r0:r1]))
        for k in ("rp", "sp"):
          out[k].append(np.zeros(n, bool))
        out["m"].append(np.ones(n, bool))
      sections.append(Section(kind, start, start + n))
    cat = lambda k, dt: (np.concatenate(out[k]).astype(dt) if out[k] else np.zeros(0, dt))
    return SectionAlignment(cat("r", np.int32), cat("s", np.int32), cat("rp", bool),
                            cat("sp", bool), cat("m", bool), tuple(sections), *texts)

  # --- inputs of the data path --------------------------------------------------------
  def prompt(self, messages: Sequence[Mapping[str, str]], continue_final: bool = False
             ) -> dict[str, np.ndarray]:
    """A generation prompt, or with ``continue_final`` a last assistant message to
    continue (the release's "logits" evaluation).

    Returns:
      ``receiver_ids``, ``attention_mask`` (receiver non-pad), ``sharer_ids``,
      ``sharer_attention_mask``, ``positions`` and ``fuse_mask``, all [T] int32.
    """
    mode = "continue" if continue_final else "generate"
    if not self.sections:  # the evaluator's path: ids with special tokens, all but the end fused
      ids = self.receiver(render(self.receiver, messages, mode))["input_ids"]
      tail = (len(self.receiver(messages[-1]["content"], add_special_tokens=False)["input_ids"])
              if continue_final else 1)
      return self._shared(ids, len(ids) - tail)
    a = self.align(messages, mode)
    if not len(a):
      raise ValueError("empty prompt")
    m = a.message_mask
    change = np.flatnonzero(m[1:] != m[:-1])
    last_run = int(change[-1]) + 1 if change.size else 0
    fuse = m & (np.arange(len(a)) < last_run)
    return self._arrays(a, fuse)

  def example(self, messages: Sequence[Mapping[str, str]]) -> dict[str, np.ndarray]:
    """A training example: a conversation ending in the assistant's response.

    Returns:
      the fields of :meth:`prompt` plus ``loss_mask`` [T] int32 (targets: the receiver
      ids; the logits at t - 1 predict token t).
    """
    if not messages or messages[-1]["role"] != "assistant":
      raise ValueError("a training conversation must end with an assistant message")
    if not self.sections:  # ChatDataset: loss after the rendered prompt, fused before its end
      n = len(self.receiver(render(self.receiver, messages[:-1], "generate"),
                            add_special_tokens=False)["input_ids"])
      ids = self.receiver(render(self.receiver, messages, "full"),
                          add_special_tokens=False)["input_ids"]
      out = self._shared(ids, n - 1)
      out["loss_mask"] = (np.arange(len(ids)) >= n).astype(np.int32)
      return out
    a = self.align(messages, "full")
    last = [s for s in a.sections if s.kind == "message"]
    if not last:
      raise ValueError("no message content found in the rendered conversation")
    start, t = last[-1].start, np.arange(len(a))
    out = self._arrays(a, a.message_mask & (t < start - 1))
    out["loss_mask"] = (t >= start).astype(np.int32)
    return out

  @staticmethod
  def _shared(ids, num_fused: int) -> dict[str, np.ndarray]:
    """Both models read the receiver's ``ids``; the first ``num_fused`` are fused."""
    ids = np.asarray(ids, np.int32).reshape(-1)
    t, ones = np.arange(len(ids)), np.ones(len(ids), np.int32)
    return {"receiver_ids": ids, "attention_mask": ones, "sharer_ids": ids.copy(),
            "sharer_attention_mask": ones.copy(), "positions": t.astype(np.int32),
            "fuse_mask": (t < num_fused).astype(np.int32)}

  @staticmethod
  def _arrays(a: SectionAlignment, fuse: np.ndarray) -> dict[str, np.ndarray]:
    return {"receiver_ids": a.receiver_ids, "attention_mask": (~a.receiver_pad).astype(np.int32),
            "sharer_ids": a.sharer_ids, "sharer_attention_mask": (~a.sharer_pad).astype(np.int32),
            "positions": np.arange(len(a), dtype=np.int32),
            "fuse_mask": np.asarray(fuse, np.int32)}
