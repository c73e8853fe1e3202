"""Reading the chosen option out of a model's free-text reply.

`parse_answer(text, choices)` returns the 0-based option index or None (unparsable: scored as
wrong and counted in the report). Only letters of the question's options count (A-D for four).

Cleaning first: complete ``<think>...</think>`` blocks are dropped (and everything before a
lone ``</think>``), as are Markdown ``*``, ``_`` runs and backticks, so "**D**" reads "D".

A *letter token* is one letter standing alone: not touching another letter or digit, optionally
in brackets or quotes ("(b)", "[C]", '"D"', "\\boxed{D}"). A token is *weak*, and never used,
when it may be an English word rather than an option: "A"/"I" (either case) followed by a space
and a word of two or more letters, or an unbracketed lower-case letter followed by a space and
a lower-case word, unless that word is a connective such as "is" or "because". So in
"A cat is ..." and "A DNA sequence ..." the "A" is an article; in "A is correct" it is a letter.

Precedence, first match wins:
  0. The reply is exactly one option's text (whitespace-collapsed, trailing "." dropped; case-
     sensitive first, then not), for options longer than one character: "-1" is not "1".
  1. The last token right after a strong cue: "answer is / answer: / correct answer is",
     "correct (best, right, final) option|choice is", "I choose|pick|select", "\\boxed{",
     "答案是 / 答案：".
  2. A token that opens the reply: "B", "B.", "(b)", "C) text", "D because ...". Skipped when
     the reply echoes an option list (two or more lines opening "X." or "X)").
  3. The last token right after a bare cue: "option C", "choice (b)", "选项C".
  4. Option text, case- and space-insensitive, first keeping punctuation and then ignoring it:
     the reply equals one option's text, or contains exactly one option's text (an option
     contained in a longer matched option is dropped: "Paris" inside "Paris, Texas").
  5. Any upper-case or bracketed tokens (list markers excluded when an option list is echoed):
     the letter if all agree, else the only letter on the last non-empty line, else None.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_LETTERS = "ABCDEFGHIJKLMNOP"

_CONNECTIVES = frozenset(
    "is was are would should must seems appears because since as and or which that for with "
    "due then so".split())

_STRONG_CUE = re.compile(
    r"(?:\b(?:(?:final|correct|right|best)\s+)?answer\b(?:\s+(?:is|would\s+be|should\s+be|"
    r"must\s+be|will\s+be))?|\b(?:final|correct|right|best)\s+(?:option|choice)\b"
    r"(?:\s+(?:is|would\s+be|should\s+be|must\s+be|will\s+be))?"
    r"|\bI\s+(?:would\s+)?(?:choose|pick|select|go\s+with)\b|\\boxed\{"
    r"|答案\s*(?:是|为|應為|应为)?|正确(?:选项|答案)\s*(?:是|为)?)"
    r"\s*[:：=\-–]?\s*(?:(?:option|choice|letter)\b\s*)?", re.IGNORECASE)
_BARE_CUE = re.compile(r"(?:\b(?:option|choice)\b|选项)\s*[:：]?\s*", re.IGNORECASE)
_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?P<open>[(\[{\"'“‘])?\s*(?P<l>[A-Za-z])\s*(?P<close>[)\]}\"'”’])?"
    r"(?![A-Za-z0-9'’])")
_LIST_MARKER = re.compile(r"^\s*([A-Z])[.)]", re.MULTILINE)


def parse_answer(text: str, choices: Sequence[str]) -> int | None:
  """The index of the option `text` picks among `choices`, or None; see the module docstring."""
  valid = _LETTERS[:len(choices)]
  text = _clean(text)
  if not text:
    return None
  listing = len(set(_LIST_MARKER.findall(text)) & set(valid)) >= 2
  for lower in (False, True):  # the reply is exactly one option's text ("-1" vs "1")
    echo = [i for i, c in enumerate(choices)
            if len(c.strip()) > 1 and _light(_clean(c), lower) == _light(text, lower)]
    if len(echo) == 1:
      return echo[0]

  def after(cues: re.Pattern[str]) -> int | None:
    found = None
    for m in cues.finditer(text):
      t = _TOKEN.match(text, m.end())
      if t and _usable(text, t, valid, cue=True):
        found = valid.index(t["l"].upper())
    return found

  if (found := after(_STRONG_CUE)) is not None:
    return found
  if not listing:
    t = _TOKEN.match(text)
    if t and _usable(text, t, valid, cue=t.end() == len(text.rstrip(".:!) "))):
      return valid.index(t["l"].upper())
  if (found := after(_BARE_CUE)) is not None:
    return found
  if (found := _match_option_text(text, choices)) is not None:
    return found
  return _loose_tokens(text, valid, listing)


def _clean(text: str) -> str:
  text = re.sub(r"<think>.*?</think>", " ", text, flags=re.DOTALL)
  if "</think>" in text:
    text = text.rsplit("</think>", 1)[1]
  text = re.sub(r"\*+|`+|(?<!\w)_+|_+(?!\w)", "", text)
  return text.strip()


def _usable(text: str, t: re.Match[str], valid: str, *, cue: bool) -> bool:
  """Valid letter, not weak; lower case only when closed by a bracket, after a cue or before
  "." / ":"."""
  letter = t["l"]
  if letter.upper() not in valid:
    return False
  if t["close"]:  # "(b)", "b)", "[C]", '"D"', "\boxed{D}"
    return True
  rest = text[t.end():]
  word = re.match(r"\s+([A-Za-z]+)\b", rest)
  if word and word[1].lower() not in _CONNECTIVES and (
      (letter in "AIai" and len(word[1]) > 1) or (letter.islower() and word[1].islower())):
    return False  # an article, a pronoun or a word: "A cat", "A DNA", "I think", "a dog".
  return letter.isupper() or cue or bool(re.match(r"[.:]", rest))


def _light(s: str, lower: bool = True) -> str:
  return " ".join((s.lower() if lower else s).split()).rstrip(".")


def _normalize(s: str) -> str:
  return " ".join(re.sub(r"[^\w]+", " ", s.lower()).split())


def _match_option_text(text: str, choices: Sequence[str]) -> int | None:
  """Exact, then contained option text; first keeping punctuation, then ignoring it."""
  for norm in (_light, _normalize):
    reply = norm(text)
    options = [norm(_clean(c)) for c in choices]
    exact = [i for i, o in enumerate(options) if o and o == reply]
    if len(exact) == 1:
      return exact[0]
    hits = [i for i, o in enumerate(options)
            if o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", reply)]
    hits = [i for i in hits
            if not any(j != i and options[i] != options[j] and options[i] in options[j]
                       for j in hits)]
    if len(hits) == 1:
      return hits[0]
  return None


def _loose_tokens(text: str, valid: str, listing: bool) -> int | None:
  def letters_in(s: str) -> set[str]:
    markers = {m.start(1) for m in _LIST_MARKER.finditer(s)} if listing else set()
    return {t["l"].upper() for t in _TOKEN.finditer(s)
            if t.start("l") not in markers and (t["l"].isupper() or t["close"])
            and _usable(s, t, valid, cue=False)}

  found = letters_in(text)
  if len(found) > 1:
    found = letters_in([line for line in text.splitlines() if line.strip()][-1])
  return valid.index(found.pop()) if len(found) == 1 else None
