"""Token alignment between a receiver tokenizer and a sharer tokenizer.

C2C fuses the sharer's KV cache into the receiver's position by position, so a sharer
with another tokenizer needs one sharer token per receiver token. Both tokenizers
encode the same text; every receiver token is paired with a sharer token of the same
characters, found from the character offsets of both encodings (fast tokenizers'
``return_offsets_mapping``) by numpy searches. This runs on host in the data path.

Strategies, for a receiver token spanning characters ``[a, b)``:
  ``"first"``: the sharer token covering character ``a``.
  ``"longest"``: the sharer token with the largest character overlap with ``[a, b)``
    (ties: the earlier one).

Several sharer tokens with one span (byte-level pieces of one character) count as
candidates in order, so both strategies pick the first of them.

Edge cases:
  * Receiver tokens without a span (BOS/EOS inserted by the post-processor, offsets
    ``(0, 0)``) map by role to the sharer's special: bos->bos, eos->eos, pad->pad,
    unk->unk; else to the sharer token with the same string; else to the sharer's
    BOS, then pad, EOS, unk, id 0 (the first that exists).
  * Template text (``"<|im_start|>"``) that is one special token for the receiver is
    plain text for a sharer without it, and is matched by its span like other text,
    i.e. to the sharer's tokens of the same characters.
  * A receiver span that no sharer token overlaps (characters the sharer's
    normaliser dropped) takes the nearest sharer token before it (after it at the
    start of the text).
  * The sharer encodes without special tokens: its ids line up with the receiver's.
  * Same tokenizer (same serialised definition): identity, no second encoding.
"""

import dataclasses
import functools
from typing import Any, Literal, Sequence

import numpy as np

Strategy = Literal["first", "longest"]
STRATEGIES = ("first", "longest")


@dataclasses.dataclass(frozen=True, eq=False)
class Alignment:
  """Receiver tokens and their aligned sharer tokens.

  Attributes:
    receiver_ids: [T] int32.
    sharer_ids: [T] int32, the sharer token aligned to each receiver token.
    receiver_offsets: [T, 2] int32 character spans of the receiver tokens.
    sharer_offsets: [T, 2] int32 character spans of the chosen sharer tokens;
      ``(0, 0)`` where a special was substituted (receiver token without a span).
  """
  receiver_ids: np.ndarray
  sharer_ids: np.ndarray
  receiver_offsets: np.ndarray
  sharer_offsets: np.ndarray

  def __len__(self) -> int:
    return len(self.receiver_ids)


def encode(tokenizer, text: str, add_special_tokens: bool = False
           ) -> tuple[np.ndarray, np.ndarray]:
  """Ids [T] int32 and character offsets [T, 2] int32 of ``text``."""
  enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
  return (np.asarray(enc["input_ids"], np.int32).reshape(-1),
          np.asarray(enc["offset_mapping"], np.int32).reshape(-1, 2))


def align_offsets(receiver_offsets: np.ndarray, sharer_offsets: np.ndarray,
                  strategy: Strategy = "first") -> np.ndarray:
  """For each receiver span, the index of the aligned sharer token.

  Args:
    receiver_offsets: [T, 2] character spans (start, end) of the receiver tokens.
    sharer_offsets: [U, 2] character spans of the sharer tokens of the same text,
      in token order.
    strategy: ``"first"`` or ``"longest"`` (see the module docstring).

  Returns:
    [T] int64 indices into the sharer tokens; -1 for receiver tokens with an empty
    span, or when no sharer token has a span.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
  r = np.asarray(receiver_offsets, np.int64).reshape(-1, 2)
  s = np.asarray(sharer_offsets, np.int64).reshape(-1, 2)
  out = np.full(len(r), -1, np.int64)
  spanned = np.flatnonzero(s[:, 1] > s[:, 0])
  has = r[:, 1] > r[:, 0]
  if spanned.size == 0 or not has.any():
    return out
  starts, ends = s[spanned, 0], s[spanned, 1]
  a, b = r[has, 0], r[has, 1]
  # Offsets are monotone in token order; the running max guards the searches anyway.
  lo = np.searchsorted(np.maximum.accumulate(ends), a, side="right")  # first ending after a
  hi = np.searchsorted(np.maximum.accumulate(starts), b, side="left")  # first starting >= b
  pick = lo.copy()  # "first": candidates [lo, hi) overlap [a, b); lo covers a if any does
  if strategy == "longest":
    width = max(int((hi - lo).max()), 1)
    cand = lo[:, None] + np.arange(width)
    safe = np.minimum(cand, len(spanned) - 1)
    overlap = np.minimum(b[:, None], ends[safe]) - np.maximum(a[:, None], starts[safe])
    overlap = np.where(cand < hi[:, None], overlap, -1)
    pick = lo + overlap.argmax(axis=1)
  pick = np.where(lo < hi, pick, np.maximum(lo - 1, 0))  # no overlap: nearest before
  out[has] = spanned[pick]
  return out


def _definition(tokenizer) -> str | None:
  backend = getattr(tokenizer, "backend_tokenizer", None)
  return backend.to_str() if backend is not None else None


def _require_fast(tokenizer, role: str) -> None:
  if not getattr(tokenizer, "is_fast", False):
    raise TypeError(f"the {role} tokenizer ({type(tokenizer).__name__}) is not a fast "
                    "tokenizer; token alignment needs its character offsets")


@dataclasses.dataclass(frozen=True, eq=False)
class TokenAligner:
  """Aligns a sharer's tokens 1:1 to a receiver's tokens of the same text.

  Attributes:
    receiver: the receiver's HF fast tokenizer.
    sharer: the sharer's HF fast tokenizer.
    strategy: ``"first"`` or ``"longest"``.
    bos_first: when the sharer's tokenizer starts every text with its BOS (Gemma, Llama),
      the sharer id at position 0 is that BOS: such models expect it (an attention
      sink), and position 0 of a chat prompt is a template token of the receiver anyway.
  """
  receiver: Any
  sharer: Any
  strategy: Strategy = "first"
  bos_first: bool = True

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ValueError(f"unknown strategy {self.strategy!r}; expected one of {STRATEGIES}")
    if not self.identity:
      _require_fast(self.receiver, "receiver")
      _require_fast(self.sharer, "sharer")

  @functools.cached_property
  def identity(self) -> bool:
    """Whether both tokenizers are the same (sharer ids == receiver ids)."""
    if self.receiver is self.sharer:
      return True
    backends = [getattr(t, "backend_tokenizer", None) for t in (self.receiver, self.sharer)]
    if None in backends or len({b.get_vocab_size(with_added_tokens=True)
                                for b in backends}) > 1:
      return False  # cheap check first: serialising a 262k vocabulary takes a second
    a, b = _definition(self.receiver), _definition(self.sharer)
    return a is not None and a == b

  @functools.cached_property
  def sharer_pad_id(self) -> int:
    """Pad id for sharer ids: the sharer's pad, else EOS, else 0."""
    for tid in (self.sharer.pad_token_id, self.sharer.eos_token_id):
      if tid is not None:
        return int(tid)
    return 0

  @functools.cached_property
  def _special_default(self) -> int:
    sh = self.sharer
    return next((int(t) for t in (sh.bos_token_id, sh.pad_token_id, sh.eos_token_id,
                                  sh.unk_token_id) if t is not None), 0)

  @functools.cached_property
  def _special_map(self) -> dict[int, int]:
    rec, sh = self.receiver, self.sharer
    table = {}
    for tid in sorted(set(rec.all_special_ids)):
      table[int(tid)] = self._special_default
      by_string = sh.convert_tokens_to_ids(rec.convert_ids_to_tokens(int(tid)))
      if by_string is not None and by_string != sh.unk_token_id:
        table[int(tid)] = int(by_string)
    for role in ("unk", "pad", "eos", "bos"):  # later roles win (bos == pad for some)
      r, s = getattr(rec, f"{role}_token_id"), getattr(sh, f"{role}_token_id")
      if r is not None and s is not None:
        table[int(r)] = int(s)
    return table

  @functools.cached_property
  def _sharer_bos(self) -> int | None:
    """The sharer's BOS id if its tokenizer adds one by default, else None."""
    bos = self.sharer.bos_token_id
    if bos is None:
      return None
    ids = self.sharer("a", add_special_tokens=True)["input_ids"]
    return int(bos) if ids and ids[0] == bos else None

  def special_id(self, receiver_id: int) -> int:
    """The sharer id for a receiver token that has no character span."""
    return self._special_map.get(int(receiver_id), self._special_default)

  @functools.cached_property
  def _vocab_map(self) -> np.ndarray:
    if self.identity:
      return np.arange(len(self.receiver), dtype=np.int32)
    n = len(self.receiver)
    texts = self.receiver.batch_decode([[i] for i in range(n)])
    enc = self.sharer(texts, add_special_tokens=False,
                      return_offsets_mapping=self.strategy == "longest")
    out = np.empty(n, np.int32)
    for i, ids in enumerate(enc["input_ids"]):
      if not ids:  # empty text (or dropped by the sharer's normaliser)
        out[i] = self.special_id(i)
      elif self.strategy == "first":
        out[i] = ids[0]
      else:
        offs = np.asarray(enc["offset_mapping"][i], np.int64).reshape(-1, 2)
        out[i] = ids[int(np.argmax(offs[:, 1] - offs[:, 0]))]  # ties: the earlier one
    special = sorted(set(int(t) for t in self.receiver.all_special_ids))
    out[special] = [self.special_id(t) for t in special]
    return out

  def vocab_map(self, size: int | None = None) -> np.ndarray:
    """Context-free receiver -> sharer id map ``[size]`` int32 (host side, cached).

    Each receiver token's text (the decoding of that one id) is tokenised alone by the
    sharer, without special tokens, and the strategy picks one of its tokens: the first
    (``"first"``) or the one covering most characters (``"longest"``). Receiver specials
    map by role, else by string, else to the fallback (:meth:`special_id`), as do tokens
    whose text the sharer encodes to nothing. This approximates the in-context alignment
    of :meth:`align` (which sees the whole text: merges across token boundaries, leading
    spaces) and serves where text arrives one token at a time, e.g. the generated tokens
    of C2C with ``fuse_response``. Identity when both tokenizers are the same.

    Args:
      size: length of the map (the receiver model's vocabulary, which may exceed the
        tokenizer's); ids past the tokenizer map to the fallback. Default: the
        tokenizer's length.
    """
    base = self._vocab_map
    size = len(base) if size is None else int(size)
    if size <= len(base):
      return base[:size].copy()
    fill = size - len(base)
    tail = (np.arange(len(base), size, dtype=np.int32) if self.identity
            else np.full(fill, self._special_default, np.int32))
    return np.concatenate([base, tail])

  def sharer_ids_for(self, text: str, receiver_ids: np.ndarray,
                     receiver_offsets: np.ndarray) -> np.ndarray:
    """Sharer ids [T] int32 aligned to a receiver encoding of ``text``."""
    return self._align(text, np.asarray(receiver_ids, np.int32).reshape(-1),
                       np.asarray(receiver_offsets, np.int32).reshape(-1, 2)).sharer_ids

  def align(self, text: str, add_special_tokens: bool = False) -> Alignment:
    """Encodes ``text`` with the receiver and aligns the sharer's tokens to it.

    Args:
      text: the text (e.g. a rendered chat template).
      add_special_tokens: let the receiver add its BOS/EOS; they map by role.
    """
    return self._align(text, *encode(self.receiver, text, add_special_tokens))

  def align_batch(self, texts: Sequence[str], add_special_tokens: bool = False
                  ) -> list[Alignment]:
    """:meth:`align` for many texts, with one batched call per tokenizer."""
    texts = list(texts)
    rec = self.receiver(texts, add_special_tokens=add_special_tokens,
                        return_offsets_mapping=True)
    sh = (None if self.identity else
          self.sharer(texts, add_special_tokens=False, return_offsets_mapping=True))
    out = []
    for i, text in enumerate(texts):
      ids = np.asarray(rec["input_ids"][i], np.int32).reshape(-1)
      offs = np.asarray(rec["offset_mapping"][i], np.int32).reshape(-1, 2)
      sharer = None if sh is None else (
          np.asarray(sh["input_ids"][i], np.int32).reshape(-1),
          np.asarray(sh["offset_mapping"][i], np.int32).reshape(-1, 2))
      out.append(self._align(text, ids, offs, sharer))
    return out

  def _align(self, text: str, receiver_ids: np.ndarray, receiver_offsets: np.ndarray,
             sharer: tuple[np.ndarray, np.ndarray] | None = None) -> Alignment:
    if self.identity:
      return Alignment(receiver_ids, receiver_ids.copy(), receiver_offsets,
                       receiver_offsets.copy())
    s_ids, s_offs = sharer if sharer is not None else encode(self.sharer, text)
    idx = align_offsets(receiver_offsets, s_offs, self.strategy)
    found = idx >= 0
    sharer_ids = np.empty(len(receiver_ids), np.int32)
    sharer_ids[found] = s_ids[idx[found]]
    sharer_ids[~found] = [self.special_id(t) for t in receiver_ids[~found]]
    sharer_offsets = np.zeros((len(receiver_ids), 2), np.int32)
    sharer_offsets[found] = s_offs[idx[found]]
    if self.bos_first and self._sharer_bos is not None and len(sharer_ids):
      sharer_ids[0] = self._sharer_bos
      sharer_offsets[0] = 0
    return Alignment(receiver_ids, sharer_ids, receiver_offsets, sharer_offsets)
