"""The user text of the ``--prompt``-token chat prompt of one C2C query, shared by
``c2c_query.py`` (c2cjax) and ``original_query.py`` (the released PyTorch code) so both
time the same prompt. Plain Python: imported in either environment."""

from __future__ import annotations

from typing import Callable

WORDS = ("Explain step by step how a cache of keys and values from one language model "
         "can be projected into another model so that it answers a question better. ").split()


def shortest(n: int, encode: Callable[[str], object], length: Callable[[object], int]):
  """``(text, encode(text))`` for the fewest words of :data:`WORDS` (cycled) whose encoding
  has ``length`` >= ``n`` tokens."""
  for k in range(1, 10 * n):
    text = " ".join(WORDS[i % len(WORDS)] for i in range(k))
    encoded = encode(text)
    if length(encoded) >= n:
      return text, encoded
  raise AssertionError(f"the prompt did not reach {n} tokens")
