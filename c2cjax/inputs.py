"""Host-side checks of generation inputs: a bad prompt is an error that names it, early.

Used by ``LM`` and ``C2C`` before anything is compiled:

* :func:`check_prompts`: a non-empty sequence of prompts, each a string, a non-empty list of
  chat messages (dicts) or a non-empty list of token ids.
* :func:`encode_text`: a string through a tokenizer; a string the tokenizer cannot encode
  (a lone surrogate, not a ``str``) or that encodes to no token is an error naming its index.
* :func:`check_ids`: token ids are integers in ``[0, vocab_size)`` (an id outside the
  vocabulary would silently read another row of the embedding under ``jit``).
* :func:`check_positions`: prompt + new tokens fit the model's ``max_position_embeddings``
  (beyond it RoPE models run on positions they were never trained on and degrade without a
  word): an error, not a warning.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _describe(prompt: Any, limit: int = 40) -> str:
  text = repr(prompt)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def check_prompts(prompts: Sequence) -> list:
  """The prompts as a list; raises ValueError/TypeError naming the first bad one."""
  if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
    raise TypeError(f"prompts must be a list of prompts, got {type(prompts).__name__} "
                    f"{_describe(prompts)} (wrap a single prompt in a list)")
  prompts = list(prompts)
  if not prompts:
    raise ValueError("no prompts: pass a non-empty list")
  for i, p in enumerate(prompts):
    if isinstance(p, str):
      continue
    if isinstance(p, (list, tuple, np.ndarray)):
      if len(p) == 0:
        raise ValueError(f"prompt {i} is empty")
      if all(isinstance(m, dict) for m in p):
        bad = [j for j, m in enumerate(p) if "role" not in m or "content" not in m]
        if bad:
          raise ValueError(f"prompt {i}: chat message {bad[0]} needs 'role' and 'content', "
                           f"got {_describe(p[bad[0]])}")
        continue
      if all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in p):
        continue
    raise TypeError(f"prompt {i} must be a string, a list of chat messages or a list of "
                    f"token ids, got {type(p).__name__} {_describe(p)}")
  return prompts


def encode_text(tokenizer, text: str, index: int, **kw) -> list[int]:
  """``tokenizer(text, **kw)["input_ids"]``; errors name prompt ``index``."""
  if tokenizer is None:
    raise ValueError(f"prompt {index} is text but the model has no tokenizer: pass token ids, "
                     "or load the model with its tokenizer")
  try:
    ids = tokenizer(text, **kw)["input_ids"]
  except (TypeError, ValueError, UnicodeError) as e:
    raise ValueError(f"prompt {index} cannot be encoded by the tokenizer ({type(e).__name__}: "
                     f"{str(e)[:120]}): {_describe(text)}") from None
  if not ids:
    raise ValueError(f"prompt {index} encodes to no tokens: {_describe(text)}")
  return list(ids)


def check_ids(ids: Sequence[Sequence[int]], vocab_size: int, who: str = "the model") -> None:
  """Raises ValueError naming the first prompt with an id outside ``[0, vocab_size)``."""
  for i, row in enumerate(ids):
    row = np.asarray(row)
    bad = row[(row < 0) | (row >= vocab_size)]
    if bad.size:
      raise ValueError(f"prompt {i} has token id {int(bad[0])} outside {who}'s vocabulary "
                       f"[0, {vocab_size})")


def check_positions(prompt_len: int, max_new_tokens: int, max_positions: int,
                    who: str = "the model") -> None:
  """Raises ValueError if ``prompt_len + max_new_tokens`` exceeds ``max_positions``."""
  if max_new_tokens < 0:
    raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
  if prompt_len + max_new_tokens > max_positions:
    raise ValueError(
        f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens = "
        f"{prompt_len + max_new_tokens} positions, more than {who}'s "
        f"max_position_embeddings ({max_positions}); shorten the prompt or max_new_tokens")


def check_token_batch(tokens, mask, *, vocab_size: int, max_positions: int,
                      max_new_tokens: int, who: str = "the model") -> None:
  """Left-padded ``tokens``/``mask`` [B, P]: a non-empty batch, real ids in the vocabulary,
  the longest prompt + ``max_new_tokens`` within ``max_positions``."""
  tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
  if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape != mask.shape:
    raise ValueError(f"tokens and mask must be [B, P] with B >= 1, got {tokens.shape} and "
                     f"{mask.shape}")
  check_ids([row[m] for row, m in zip(tokens, mask)], vocab_size, who)
  check_positions(int(mask.sum(1).max()), max_new_tokens, max_positions, who)
