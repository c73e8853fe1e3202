"""Tokenizer-side helpers shared by models, C2C, data and evaluation (host side, numpy).

Chat templating (``render``, ``encode_prompt``), prompt encoding for generation
(``encode_prompts``), the one left/right padding helper (``pad_rows``) and detokenising
(``decode_texts``). Nothing here touches a model or JAX.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import numpy as np

Side = Literal["left", "right"]


def round_up(n: int, m: int) -> int:
  """The smallest multiple of ``m`` that is >= ``n``."""
  return -(-n // m) * m


def pad_rows(rows: Sequence[Sequence[int]], width: int, pad_id: int = 0, *,
             batch: int | None = None, side: Side = "left") -> tuple[np.ndarray, np.ndarray]:
  """Ragged id rows -> padded ids and mask, both [batch, width] int32.

  Args:
    rows: id sequences, each at most ``width`` long.
    width: padded length.
    pad_id: value of the padding slots.
    batch: rows of the output (>= len(rows)); extra rows are all padding (mask 0).
    side: "left" (prompts for generation: the last token in the last slot) or "right".
  """
  batch = len(rows) if batch is None else batch
  if len(rows) > batch:
    raise ValueError(f"{len(rows)} rows do not fit a batch of {batch}")
  tokens = np.full((batch, width), pad_id, np.int32)
  mask = np.zeros((batch, width), np.int32)
  for i, row in enumerate(rows):
    n = len(row)
    if n > width:
      raise ValueError(f"a row of length {n} does not fit width {width}")
    sl = slice(width - n, width) if side == "left" else slice(0, n)
    tokens[i, sl] = row
    mask[i, sl] = 1
  return tokens, mask


def require_chat_template(tokenizer) -> None:
  """Raises a ValueError naming the problem if ``tokenizer`` has no chat template."""
  if not getattr(tokenizer, "chat_template", None):
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    raise ValueError(
        f"tokenizer {name!r} has no chat template, so chat messages cannot be rendered "
        "(base models such as the Gemma-3-270M GGUF have none); use an instruct model's "
        "tokenizer or set tokenizer.chat_template")


def render(tokenizer, messages: Sequence[Mapping[str, str]],
           add_generation_prompt: bool) -> str:
  """The chat template's text; ``enable_thinking=False`` where the template reads it."""
  require_chat_template(tokenizer)
  kwargs = {"enable_thinking": False} if "enable_thinking" in tokenizer.chat_template else {}
  return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                       add_generation_prompt=add_generation_prompt, **kwargs)


def encode_prompt(tokenizer, messages: Sequence[Mapping[str, str]]) -> list[int]:
  """Messages -> prompt ids ending in the assistant's generation prompt."""
  text = render(tokenizer, messages, add_generation_prompt=True)
  return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def as_messages(prompt) -> list[dict[str, str]]:
  """A chat message list, or a string taken as one user message."""
  return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _is_messages(p) -> bool:
  return isinstance(p, (list, tuple)) and bool(p) and isinstance(p[0], dict)


def encode_prompts(tokenizer, prompts: Sequence, *, chat: bool | None = None, pad_id: int = 0,
                   multiple_of: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Strings, chat message lists or id lists -> left-padded ids and mask [B, P].

  Strings are tokenised as-is (with the tokenizer's special tokens) unless ``chat``; chat
  message lists (and strings with ``chat``) go through the chat template; P is rounded up
  to ``multiple_of`` (fewer compiled shapes).
  """
  ids = []
  for p in prompts:
    if isinstance(p, str) and not chat:
      ids.append(tokenizer(p, add_special_tokens=True)["input_ids"])
    elif isinstance(p, str) or _is_messages(p):
      ids.append(encode_prompt(tokenizer, as_messages(p)))
    else:
      ids.append([int(t) for t in p])
  if any(len(x) == 0 for x in ids):
    raise ValueError("empty prompt")
  return pad_rows(ids, round_up(max(len(x) for x in ids), multiple_of), pad_id)


def decode_texts(tokenizer, out: np.ndarray, lengths: np.ndarray,
                 eos_ids: Sequence[int] = ()) -> list[str]:
  """Generated ids [B, N] and lengths [B] -> strings without EOS and special tokens."""
  eos = set(int(e) for e in eos_ids)
  texts = []
  for row, n in zip(np.asarray(out), np.asarray(lengths)):
    row = [t for t in row[:n].tolist() if t not in eos]
    texts.append(tokenizer.decode(row, skip_special_tokens=True))
  return texts

