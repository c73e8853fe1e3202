"""The released C2C's chat alignment ("release" scheme): sections, message-only fusion.

- ``rules``: the scheme's rules as read from the release's code (its docstring states
  them): rendering with each model's own template, content spans, token ranges and
  sections, pad ids, :class:`SectionAlignment`, :func:`shared_vocab`, :func:`check_scheme`.
- ``aligner``: :class:`ReleaseAligner`, one tokenizer pair's aligned ids and masks for
  prompts and training examples (host side, numpy).
"""

from c2cjax.sections.aligner import ReleaseAligner
from c2cjax.sections.rules import (RELEASE_DEFAULT_TEMPLATE, SCHEMES, STRATEGIES, Section,
                                   SectionAlignment, check_scheme, content_spans, pad_id,
                                   render, section_ranges, shared_vocab, token_ranges)

__all__ = ["RELEASE_DEFAULT_TEMPLATE", "ReleaseAligner", "SCHEMES", "STRATEGIES", "Section",
           "SectionAlignment", "check_scheme", "content_spans", "pad_id", "render",
           "section_ranges", "shared_vocab", "token_ranges"]
