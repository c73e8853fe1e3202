"""Chat records -> receiver token ids, C2C masks and aligned sharer ids.

A training example is a conversation whose last message is the assistant's response.
As in the C2C reference code, the prompt is every message before it rendered with the
generation prompt, and the response is the rest of the full rendering (its content,
end-of-turn token and what the template puts after it). Per receiver token ``t``:

  loss_mask[t] = 1: token t is a target (a response token). The logits at t - 1
    predict it; the trainer does the shift.
  fuse_mask[t] = 1: the sharer's cache entry is fused at t. C2C fuses the prompt
    except its last token (that one is fed when decoding starts), so this is
    ``t < num_prompt_tokens - 1``; ``fuse_last`` adds the last prompt token and
    ``fuse_response`` the response tokens (C2C generation's options of the same names).

A sharer may also read a private context first (``sharer_context``, e.g. a document the
receiver never sees): with ``context_len > 0`` every example carries, per sharer,
``sharer_context_ids [context_len]`` (the context in the sharer's tokens, left-padded) and
``sharer_context_mask``. The sharer then prefills ``context + its aligned ids``: slot
``context_len + t`` of its cache is aligned to receiver token ``t`` (see ``c2cjax.c2c``).

Both masks come from character offsets: the full conversation is rendered once and
tokenised with offsets, and tokens starting at or after the prompt's length in
characters are response tokens. Templates whose prompt is not a prefix of the
conversation fall back to the last occurrence of the response's content.

That is the ``"offsets"`` alignment scheme. With ``alignment="release"`` the encoder
follows the released C2C instead (:mod:`c2cjax.sections`): each sharer renders with its
own chat template, the two renderings are aligned section by section (pads masked out on
either side: ``attention_mask`` for the receiver, ``sharer_attention_mask`` for the
sharer), only message contents are fused, and the loss starts at the last message.
"""

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from c2cjax import align, sections
from c2cjax.text import encode_prompt, render, require_chat_template  # noqa: F401 (re-exported)

ROLES = {"system": "system", "user": "user", "assistant": "assistant",
         "human": "user", "gpt": "assistant"}


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def instruction_to_messages(instruction: str, context: str = "", response: str = "",
                            system: str = "") -> list[dict[str, str]]:
  """Alpaca / GPTeacher fields -> messages.

  The user turn is ``instruction``, plus a newline and the record's ``input``
  (``context`` here) when that is non-empty, as LLaMA-Factory joins them.
  """
  instruction, context = _text(instruction).strip(), _text(context).strip()
  user = f"{instruction}\n{context}" if context else instruction
  messages = [{"role": "system", "content": _text(system)}] if system else []
  return messages + [{"role": "user", "content": user},
                     {"role": "assistant", "content": _text(response)}]


def to_messages(record: Mapping[str, Any], drop_system: bool = False) -> list[dict[str, str]]:
  """Normalises a chat record to ``[{"role", "content"}, ...]``.

  Accepted records:
    ``{"messages": [{"role", "content"}, ...]}``, also the TFDS decoding of it
      (``{"messages": {"role": [...], "content": [...]}}``, bytes or str);
    OpenHermes-2.5: ``{"conversations": [{"from": "system"|"human"|"gpt", "value"}]}``;
    instruction data: ``{"instruction", "input", "response" | "output"}``.

  Args:
    record: one record.
    drop_system: drop system messages (the C2C reference does for OpenHermes).

  Returns:
    The messages with roles system / user / assistant.
  """
  if "messages" in record:
    msgs = record["messages"]
    if isinstance(msgs, Mapping):  # TFDS Sequence-of-dict decoding
      msgs = [{"role": r, "content": c} for r, c in zip(msgs["role"], msgs["content"])]
    pairs = [(m["role"], m["content"]) for m in msgs]
  elif "conversations" in record:
    pairs = [(m["from"], m["value"]) for m in record["conversations"]]
  elif "instruction" in record:
    response = record.get("response", record.get("output"))
    if response is None:
      raise ValueError(f"instruction record without 'response' or 'output': {sorted(record)}")
    pairs = [(m["role"], m["content"]) for m in instruction_to_messages(
        record["instruction"], record.get("input", ""), response, record.get("system", ""))]
  else:
    raise ValueError(f"unrecognised chat record with keys {sorted(record)}; expected "
                     "'messages', 'conversations' or 'instruction'")
  out = []
  for role, content in pairs:
    role = _text(role)
    if role not in ROLES:
      raise ValueError(f"unknown chat role {role!r}; expected one of {sorted(ROLES)}")
    if drop_system and ROLES[role] == "system":
      continue
    out.append({"role": ROLES[role], "content": _text(content)})
  return out


def _token_starts(offsets: np.ndarray) -> np.ndarray:
  """Token start chars [T]; tokens without a span start where the text so far ends."""
  empty = offsets[:, 1] <= offsets[:, 0]
  ends_so_far = np.maximum.accumulate(offsets[:, 1]) if len(offsets) else offsets[:, 1]
  return np.where(empty, ends_so_far, offsets[:, 0])


@dataclasses.dataclass(frozen=True, eq=False)
class ChatEncoder:
  """Encodes conversations for the receiver, with sharer ids aligned to its tokens.

  Attributes:
    tokenizer: the receiver's HF fast tokenizer (must have a chat template).
    max_len: training examples are cut to this many tokens.
    aligners: one aligner per sharer, each with this receiver tokenizer: a
      :class:`c2cjax.align.TokenAligner` ("offsets") or a
      :class:`c2cjax.sections.ReleaseAligner` ("release"); none: no ``sharer_ids``.
    fuse_last: ``fuse_mask`` also covers the last prompt token ("offsets" only).
    fuse_response: ``fuse_mask`` also covers the response tokens ("offsets" only).
    alignment: the scheme, "offsets" or "release" (see the module docstring).
    max_runs: release scheme: training examples with more runs of fused tokens (message
      contents before the last message) are skipped; the training step fuses each run in
      its own pass up to a static bound (``c2cjax.release_prefill``). None: no limit.
    context_len: slots for a sharer-only context (0: none; "offsets" only); longer contexts
      drop the example.
    reply_prefix: text that opens every reply and belongs to the prompt ("offsets" only):
      fused like the prompt (its last token too with ``fuse_last``) and not a loss target,
      as an evaluation prompt that ends with it (e.g. "The answer is:") is fused.
  """
  tokenizer: Any
  max_len: int
  aligners: tuple[Any, ...] = ()
  fuse_last: bool = False
  fuse_response: bool = False
  alignment: str = "offsets"
  max_runs: int | None = None
  context_len: int = 0
  reply_prefix: str = ""

  def __post_init__(self):
    require_chat_template(self.tokenizer)
    if self.max_len < 2:
      raise ValueError(f"max_len must be >= 2, got {self.max_len}")
    if self.context_len < 0 or (self.context_len and not self.aligners):
      raise ValueError("context_len must be >= 0, and a sharer context needs aligners")
    object.__setattr__(self, "aligners", tuple(self.aligners))
    sections.check_scheme(self.alignment)
    want = sections.ReleaseAligner if self.alignment == "release" else align.TokenAligner
    for a in self.aligners:
      if not isinstance(a, want):
        raise TypeError(f"alignment {self.alignment!r} needs {want.__name__} aligners, "
                        f"got {type(a).__name__}")
      if a.receiver is not self.tokenizer:
        raise ValueError("every aligner must have this encoder's tokenizer as its receiver")
    if self.alignment == "release":
      if not self.aligners:
        raise ValueError("the release scheme needs one ReleaseAligner per sharer")
      if self.fuse_last or self.fuse_response or self.context_len or self.reply_prefix:
        raise ValueError("fuse_last / fuse_response / context_len / reply_prefix are options of the "
                         "offsets scheme; the release scheme fuses message contents only")

  @property
  def pad_ids(self) -> dict[str, Any]:
    """Pad value per id field: receiver pad (else EOS, else 0) and each sharer's."""
    tok = self.tokenizer
    rec = next((int(t) for t in (tok.pad_token_id, tok.eos_token_id) if t is not None), 0)
    sharers = tuple(a.sharer_pad_id for a in self.aligners)
    out = {"receiver_ids": rec, "sharer_ids": sharers}
    if self.context_len:
      out["sharer_context_ids"] = sharers
    return out

  def context(self, text: str | bytes | None) -> dict[str, Any] | None:
    """``sharer_context_ids`` / ``sharer_context_mask``: tuples (one per sharer) of
    ``[context_len]`` int32, ``text`` in each sharer's tokens, left-padded; None when it
    does not fit. Empty or None text: an all-padding context.
    """
    text = _text(text) if text is not None else ""
    ids, masks = [], []
    for a in self.aligners:
      row = np.full(self.context_len, a.sharer_pad_id, np.int32)
      mask = np.zeros(self.context_len, np.int32)
      if text:
        x = np.asarray(a.sharer(text, add_special_tokens=True)["input_ids"], np.int32)
        if len(x) > self.context_len:
          return None
        row[self.context_len - len(x):], mask[self.context_len - len(x):] = x, 1
      ids.append(row)
      masks.append(mask)
    return {"sharer_context_ids": tuple(ids), "sharer_context_mask": tuple(masks)}

  def _release(self, rows: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The sharers' release-scheme rows merged: receiver fields must agree across sharers
    (they differ when two sharers' templates pad the receiver differently)."""
    first = rows[0]
    for r in rows[1:]:
      if any(not np.array_equal(first[k], r[k]) for k in first
             if k not in ("sharer_ids", "sharer_attention_mask")):
        raise ValueError("these sharers' chat templates align the receiver differently; the "
                         "release scheme aligns several sharers only when they agree")
    out = {k: v for k, v in first.items() if k != "positions"}  # positions are the slots
    for k in ("sharer_ids", "sharer_attention_mask"):  # a tuple per sharer, as sharer_ids
      out[k] = tuple(r[k] for r in rows)
    return out

  def split(self, messages: Sequence[Mapping[str, str]]) -> tuple[str, int]:
    """The full rendered conversation and the prompt's length in characters (with
    ``reply_prefix``, up to its end)."""
    if not messages or messages[-1]["role"] != "assistant":
      raise ValueError("a training conversation must end with an assistant message")
    full = render(self.tokenizer, messages, add_generation_prompt=False)
    prompt = render(self.tokenizer, messages[:-1], add_generation_prompt=True)
    if full.startswith(prompt):
      pos = len(prompt)
    else:
      content = messages[-1]["content"]
      pos = full.rfind(content) if content else -1
      if pos < 0:
        raise ValueError("cannot locate the response in the rendered chat template")
    if self.reply_prefix:
      if not full.startswith(self.reply_prefix, pos):
        raise ValueError(f"reply_prefix {self.reply_prefix!r}: this reply does not open with "
                         f"it: {full[pos:pos + 60]!r}")
      pos += len(self.reply_prefix)
    return full, pos

  def _fuse_mask(self, n: int, num_prompt: int) -> np.ndarray:
    """[n] int32: the prompt but its last token, plus what the options add."""
    t = np.arange(n)
    fuse = t < num_prompt - (0 if self.fuse_last else 1)
    if self.fuse_response:
      fuse |= t >= num_prompt
    return fuse.astype(np.int32)

  def _sharer_ids(self, text: str, ids: np.ndarray, offsets: np.ndarray, n: int):
    return tuple(a.sharer_ids_for(text, ids, offsets)[:n] for a in self.aligners)

  def __call__(self, messages: Sequence[Mapping[str, str]],
               context: str | bytes | None = None) -> dict[str, Any] | None:
    """One training example, or None when no response token survives truncation (or the
    sharer ``context`` does not fit ``context_len``).

    Returns:
      ``receiver_ids [L] int32``, ``attention_mask``, ``loss_mask``, ``fuse_mask``
      ``[L] int32`` and, with aligners, ``sharer_ids``, a tuple of ``[L] int32`` (one per
      sharer); ``L <= max_len``. With ``context_len``, also :meth:`context`'s fields. The
      release scheme adds ``sharer_attention_mask`` (a tuple like ``sharer_ids``); its
      ``attention_mask`` has 0 at the receiver's pads inside the sequence.
    """
    if context and not self.context_len:
      raise ValueError("a sharer context needs ChatEncoder(context_len > 0)")
    if self.alignment == "release":
      ex = self._release([a.example(messages) for a in self.aligners])
      n = min(len(ex["receiver_ids"]), self.max_len)
      fuse = ex["fuse_mask"][:n].astype(bool)
      runs = int(np.sum(fuse[1:] & ~fuse[:-1])) + int(fuse[:1].sum())
      if not ex["loss_mask"][:n].any() or (self.max_runs is not None and runs > self.max_runs):
        return None
      cut = lambda v: tuple(x[:n] for x in v) if isinstance(v, tuple) else v[:n]
      return {k: cut(v) for k, v in ex.items()}
    text, prompt_chars = self.split(messages)
    ids, offsets = align.encode(self.tokenizer, text)
    is_response = _token_starts(offsets) >= prompt_chars
    num_prompt = int(np.argmax(is_response)) if is_response.any() else len(ids)
    n = min(len(ids), self.max_len)
    if num_prompt >= n:
      return None
    example = {
        "receiver_ids": ids[:n],
        "attention_mask": np.ones(n, np.int32),
        "loss_mask": is_response[:n].astype(np.int32),
        "fuse_mask": self._fuse_mask(n, num_prompt),
    }
    if self.aligners:
      example["sharer_ids"] = self._sharer_ids(text, ids, offsets, n)
    if self.context_len:
      ctx = self.context(context)
      if ctx is None:
        return None
      example.update(ctx)
    return example

  def prompt(self, messages: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """A generation prompt (ends in the assistant's generation prompt; not truncated).

    Returns:
      ``receiver_ids``, ``attention_mask``, ``fuse_mask`` (all but the last token; all
      with ``fuse_last``) ``[P] int32`` and, with aligners, ``sharer_ids``.
    """
    if self.alignment == "release":
      return self._release([a.prompt(messages) for a in self.aligners])
    text = render(self.tokenizer, messages, add_generation_prompt=True)
    ids, offsets = align.encode(self.tokenizer, text)
    if not len(ids):
      raise ValueError("empty prompt")
    n = len(ids)
    example = {"receiver_ids": ids, "attention_mask": np.ones(n, np.int32),
               "fuse_mask": self._fuse_mask(n, n)}
    if self.aligners:
      example["sharer_ids"] = self._sharer_ids(text, ids, offsets, n)
    return example
