"""The released C2C's chat alignment ("release" scheme): sections, message-only fusion.

Two named alignment schemes turn chat messages into receiver ids, sharer ids and masks:

  ``"offsets"`` (c2cjax's own, :mod:`c2cjax.align` + :mod:`c2cjax.data.chat`): the
    receiver's rendered chat text is re-tokenised by the sharer and aligned by character
    offsets; every prompt token but the last is fused.
  ``"release"`` (:mod:`c2cjax.sections`): what the released C2C code (``rosetta``) feeds its fuser.

The release's rules, as read from its code (aligner, dataset adapters, evaluator, model
wrapper) and checked against its outputs (``tests/fixtures/rosetta``):

Rendering. Each model renders the messages with its **own** chat template
(``enable_thinking=False``), without special tokens added by the tokenizer. A tokenizer
without a template gets the release's fallback (:data:`RELEASE_DEFAULT_TEMPLATE`,
"### Human: ..."), which drops system messages. Inference renders with the generation
prompt; training renders the whole conversation; the "logits" evaluation renders all but
the last (assistant) message with the generation prompt and appends that message's
content (no end of turn).

Sections. In each rendering, each non-empty message content is located by string search,
in order, preferring a match followed by ``"<"`` or by the end of the text; its token
range runs from the first token ending after the content starts to the first token
starting at or after it ends (tokens straddling a boundary belong to the message). The
gaps between messages are "template" sections (role markers, default system prompts,
generation prompts). Both renderings must give the same sequence of section kinds, else
the pair cannot be aligned (the release asserts; we raise ``ValueError``): e.g. a sharer
template that drops system messages, or has nothing after the last message while the
receiver's has an end of turn (every training example of a template-less sharer).

Padding. Section by section, a template section keeps each side's own tokens and pads the
shorter side at the section's end with its pad id (pad, else EOS); pads are masked out of
attention on that side (``attention_mask`` / ``sharer_attention_mask``), the receiver's
included. A message section takes the receiver's tokens, and one sharer token per receiver
token: the receiver token alone is decoded and re-encoded by the sharer, and the strategy
picks the first of its tokens (``"first"``) or the one with the longest decoded text
(``"longest"``, earliest on ties); specials map by role (pad, EOS, BOS, UNK; a later role
wins for a shared id), else by the decoded string, else to the sharer's UNK (or 0); text
the sharer encodes to nothing maps to UNK (or 0). No context: the same receiver token
always maps to the same sharer token.

Positions. Both models use positions ``0 .. T-1`` over the padded sequence, pads
included (a pad occupies a position).

Fusion. Sections of the data path are maximal runs of equal ``fuse_mask``. They run in
order: the receiver prefills a section on its cache (whose earlier fused slots are already
fused), the sharer prefills it on its own cache, and, for a fused run, every slot of the
run is fused. The last run is never fused and is run by the receiver alone; generation
starts from the logits of its last position (a pad, if the receiver side was padded).
  * Prompts: the message tokens are fused, except when the prompt ends in a message
    (the "logits" evaluation), whose tokens form the last run.
  * Training: the message tokens before the last message are fused (those at
    ``t < start - 1``, ``start`` the last message's first token, so a message token right
    before it would not be); the loss is on every token from ``start`` on (the last
    message's content and the template after it, the receiver's pads there included, as
    targets).

Without the aligner (the release's ``is_do_alignment`` off, as its recipe for Qwen3-0.6B
+ Qwen2.5-0.5B trains): both models read the receiver's ids of its own rendering, every
prompt token but the last is fused, the loss is on the response. :class:`ReleaseAligner`
takes that path when the two tokenizers share one vocabulary model (``sections=None``)
unless told otherwise.

One known difference: the models take zeros at the start of a row as left padding, so a
side whose first template section renders nothing while the other's does (no template
text before the first message) starts its positions after those pads, where the release
counts them. The templates of the paper's models all render text before the first message.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import numpy as np

SCHEMES = ("release", "offsets")
STRATEGIES = ("first", "longest")

# The release's chat template for tokenizers that have none (whitespace significant).
RELEASE_DEFAULT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}### Human: "
    "{{ message['content'] }}{% elif message['role'] == 'assistant' %}### Assistant: "
    "{{ message['content'] }}{% endif %}{% if not loop.last %}\n    {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}\n    ### Assistant:{% endif %}")


def check_scheme(name: str) -> str:
  """``name`` if it names an alignment scheme, else a ValueError listing them."""
  if name not in SCHEMES:
    raise ValueError(f"unknown alignment scheme {name!r}; expected one of {SCHEMES}")
  return name


@dataclasses.dataclass(frozen=True)
class Section:
  """One section of an aligned pair: ``kind`` is "template" or "message"; ``start``,
  ``end`` index the padded sequences (both sides share them after padding)."""
  kind: str
  start: int
  end: int


@dataclasses.dataclass(frozen=True, eq=False)
class SectionAlignment:
  """A chat rendered by both models, aligned section by section.

  Attributes:
    receiver_ids, sharer_ids: [T] int32, padded.
    receiver_pad, sharer_pad: [T] bool, True where a pad was inserted.
    message_mask: [T] bool, True on message sections.
    sections: the sections in order.
    receiver_text, sharer_text: the two renderings.
  """
  receiver_ids: np.ndarray
  sharer_ids: np.ndarray
  receiver_pad: np.ndarray
  sharer_pad: np.ndarray
  message_mask: np.ndarray
  sections: tuple[Section, ...]
  receiver_text: str
  sharer_text: str

  def __len__(self) -> int:
    return len(self.receiver_ids)


def pad_id(tokenizer) -> int:
  """The release's pad id: the tokenizer's pad, else its EOS."""
  for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
    if tid is not None:
      return int(tid)
  raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad "
                   "nor an EOS token; the release scheme pads template sections with it")


def render(tokenizer, messages: Sequence[Mapping[str, str]], mode: str) -> str:
  """A model's own rendering of ``messages``.

  Args:
    mode: "generate" (with the generation prompt), "full" (the whole conversation) or
      "continue" (all but the last message with the generation prompt, then the last
      message's content: an assistant reply to be continued).
  """
  template = getattr(tokenizer, "chat_template", None) or RELEASE_DEFAULT_TEMPLATE
  msgs = [dict(m) for m in messages]
  kw = dict(tokenize=False, chat_template=template, enable_thinking=False)
  if mode == "continue":
    if not msgs or msgs[-1]["role"] != "assistant":
      raise ValueError("mode 'continue' needs a last assistant message to continue")
    return tokenizer.apply_chat_template(msgs[:-1], add_generation_prompt=True, **kw) + \
        msgs[-1]["content"]
  if mode not in ("generate", "full"):
    raise ValueError(f"unknown render mode {mode!r}; expected generate, full or continue")
  return tokenizer.apply_chat_template(msgs, add_generation_prompt=mode == "generate", **kw)


def content_spans(text: str, messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
  """Character spans of the non-empty message contents in ``text``, searched in order.

  A match followed by ``"<"`` (a special token) or by the end of the text is preferred;
  else the first match after the previous span, else the first anywhere; a content not
  found (or found inside a ``begin_of_text`` marker) has no span.
  """
  spans, pos = [], 0
  for m in messages:
    content = m.get("content")
    if not isinstance(content, str) or not content:
      continue
    found, i = None, text.find(content, pos)
    while i >= 0:
      end = i + len(content)
      if end == len(text) or text[end] == "<":
        found = i
        break
      i = text.find(content, i + 1)
    if found is None:
      found = text.find(content, pos)
      if found < 0:
        found = text.find(content)
      if found >= 0:
        before = text[max(0, found - 10):found]
        if ("<" in before and ">" not in before and
            "begin_of_text" in text[max(0, found - 20):found + 20]):
          continue
    if found is not None and found >= 0:
      spans.append((found, found + len(content)))
      pos = found + len(content)
  return spans


def token_ranges(offsets: np.ndarray, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
  """Token ranges of character spans: from the first token ending after the span's start
  to the first token (from there) starting at or after its end. ``offsets`` [N, 2]."""
  offsets = np.asarray(offsets, np.int64).reshape(-1, 2)
  n, out = len(offsets), []
  for s, e in spans:
    after = offsets[:, 1] > s
    start = int(np.argmax(after)) if after.any() else n
    rest = offsets[start:, 0] >= e
    out.append((start, start + (int(np.argmax(rest)) if rest.any() else n - start)))
  return out


def section_ranges(n: int, ranges: Sequence[tuple[int, int]]) -> list[tuple[str, int, int]]:
  """``(kind, start, end)`` of the sections of ``n`` tokens whose message token ``ranges``
  (from :func:`token_ranges`) are given: the gaps between them are template sections."""
  out, prev = [], 0
  for s, e in ranges:
    if prev < s:
      out.append(("template", prev, s))
    out.append(("message", s, e))
    prev = e
  if prev < n:
    out.append(("template", prev, n))
  return out


def _vocab_model(tokenizer) -> str:
  backend = tokenizer.backend_tokenizer
  return json.dumps(json.loads(backend.to_str()).get("model"), sort_keys=True)


def shared_vocab(receiver, sharer) -> bool:
  """Whether both tokenizers have one vocabulary model (ids mean the same tokens), e.g.
  Qwen3 and Qwen2.5; their added tokens may differ."""
  if receiver is sharer:
    return True
  a, b = (getattr(t, "backend_tokenizer", None) for t in (receiver, sharer))
  if a is None or b is None or (a.get_vocab_size(with_added_tokens=False) !=
                                b.get_vocab_size(with_added_tokens=False)):
    return False  # cheap check first: serialising a 262k vocabulary takes seconds
  return _vocab_model(receiver) == _vocab_model(sharer)
