"""Prompts for zero-shot multiple-choice evaluation, as in the C2C paper.

Three formats:
  * generative MCQ (the paper's): the question, lettered options "A. ..." and an instruction to
    answer with the letter, rendered through the receiver's chat template with
    ``add_generation_prompt=True`` (and ``enable_thinking=False`` where the template reads it).
    A tokenizer without a chat template (a base model) gets the plain completion format
    "Question: ...\\nA. ...\\nAnswer:" instead.
  * cloze (lm-evaluation-harness style log-likelihood scoring): context "Question: {q}\\nAnswer:"
    and one continuation " {option}" per option.
  * text-to-text (T2T baseline): the sharer is asked to write background/analysis for the
    question without answering it; the receiver then gets the MCQ prompt with that text
    prepended as context.

Templates are plain ``str.format`` strings; `PromptConfig` holds them so a config file can
override any of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from c2cjax.evaluation.datasets import Question

LETTERS = "ABCDEFGHIJKLMNOP"

# Fields: {question}, {options} ("A. ...\nB. ..."), {letters} ("A/B/C/D").
MCQ_TEMPLATE = (
    "Answer the following multiple-choice question.\n\n"
    "{question}\n\n"
    "Options:\n{options}\n\n"
    "Choose the single best option. Reply only with \"The correct answer is X\", where X is "
    "one of {letters}, with no explanation.")

# The sharer's side of the T2T baseline. Same fields as MCQ_TEMPLATE.
BACKGROUND_TEMPLATE = (
    "Here is a multiple-choice question.\n\n"
    "{question}\n\n"
    "Options:\n{options}\n\n"
    "Write, in a few sentences, the background knowledge and analysis that would help someone "
    "answer it. Do not say which option is correct.")

# How the receiver sees the sharer's text in T2T. Fields: {background}, {prompt} (the MCQ text).
CONTEXT_TEMPLATE = "Background information that may help:\n{background}\n\n{prompt}"

# Base-model (no chat template) formats.
PLAIN_MCQ_TEMPLATE = "Question: {question}\n{options}\nAnswer:"
PLAIN_BACKGROUND_TEMPLATE = (
    "Question: {question}\n{options}\nBackground knowledge that helps answer this question "
    "(without giving the answer):")
PLAIN_CONTEXT_TEMPLATE = "Background: {background}\n\n{prompt}"
CLOZE_TEMPLATE = "Question: {question}\nAnswer:"


@dataclasses.dataclass(frozen=True)
class PromptConfig:
  """Every template and chat option used to build prompts.

  Attributes:
    mcq: chat-model MCQ user message; fields {question}, {options}, {letters}.
    background: chat-model sharer request for T2T; same fields.
    context: chat-model T2T receiver message; fields {background}, {prompt}.
    plain_mcq, plain_background, plain_context: the same three for base models.
    cloze: cloze context; field {question}.
    reply_prefix: text after the cloze context that opens the model's reply (e.g. "The
      answer is:"); every system reads it after the context, and C2C reads it with the
      receiver alone on its fused cache, as it decodes a reply (fusers are trained with the
      reply unfused), instead of fusing it as part of the prompt.
    system: optional system message (None: no system turn; some templates reject one).
    enable_thinking: passed to templates that read `enable_thinking` (Qwen3); the paper's
      evaluation runs with thinking off.
  """

  mcq: str = MCQ_TEMPLATE
  background: str = BACKGROUND_TEMPLATE
  context: str = CONTEXT_TEMPLATE
  plain_mcq: str = PLAIN_MCQ_TEMPLATE
  plain_background: str = PLAIN_BACKGROUND_TEMPLATE
  plain_context: str = PLAIN_CONTEXT_TEMPLATE
  cloze: str = CLOZE_TEMPLATE
  reply_prefix: str = ""
  system: str | None = None
  enable_thinking: bool = False


DEFAULT = PromptConfig()


def letters(n: int) -> str:
  """The first `n` option letters, "ABCD" for n=4."""
  if not 1 <= n <= len(LETTERS):
    raise ValueError(f"between 1 and {len(LETTERS)} options supported, got {n}")
  return LETTERS[:n]


def format_options(choices: Sequence[str]) -> str:
  """("x", "y") -> "A. x\\nB. y"."""
  return "\n".join(f"{l}. {c}" for l, c in zip(letters(len(choices)), choices))


def has_chat_template(tokenizer: Any) -> bool:
  return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def chat_messages(user: str, config: PromptConfig = DEFAULT) -> list[dict[str, str]]:
  """One user turn, after the optional system turn, as chat messages."""
  messages = [{"role": "user", "content": user}]
  if config.system is not None:
    messages.insert(0, {"role": "system", "content": config.system})
  return messages


def mcq_messages(q: Question, config: PromptConfig = DEFAULT,
                 background: str | None = None) -> list[dict[str, str]]:
  """The chat-model MCQ prompt of `q` as messages, not yet rendered: for the release
  alignment scheme (`c2cjax.sections`), where each model renders them with its own chat
  template. With `background` (T2T), the sharer's text comes first (context template)."""
  text = config.mcq.format(**_fields(q))
  if background is not None:
    text = config.context.format(background=background.strip(), prompt=text)
  return chat_messages(text, config)


def render_chat(tokenizer: Any, user: str, config: PromptConfig = DEFAULT) -> str:
  """One user turn (plus optional system turn) through the tokenizer's chat template, ready for
  the assistant's reply. `enable_thinking` is passed only to templates that mention it."""
  messages = chat_messages(user, config)
  kwargs = {}
  template = tokenizer.chat_template
  if "enable_thinking" in (template if isinstance(template, str) else str(template)):
    kwargs["enable_thinking"] = config.enable_thinking
  return tokenizer.apply_chat_template(
      messages, add_generation_prompt=True, tokenize=False, **kwargs)


def _fields(q: Question) -> dict[str, str]:
  return {"question": q.question, "options": format_options(q.choices),
          "letters": "/".join(letters(len(q.choices)))}


def mcq_prompt(q: Question, tokenizer: Any = None, config: PromptConfig = DEFAULT,
               background: str | None = None) -> str:
  """The receiver's prompt text for `q`: chat-templated if the tokenizer has a template, else
  the plain "Question: ...\\nA. ...\\nAnswer:" format. With `background` (T2T), the sharer's
  text is prepended through the context template."""
  if has_chat_template(tokenizer):
    text = config.mcq.format(**_fields(q))
    if background is not None:
      text = config.context.format(background=background.strip(), prompt=text)
    return render_chat(tokenizer, text, config)
  text = config.plain_mcq.format(**_fields(q))
  if background is not None:
    text = config.plain_context.format(background=background.strip(), prompt=text)
  return text


def background_prompt(q: Question, tokenizer: Any = None,
                      config: PromptConfig = DEFAULT) -> str:
  """The T2T sharer's prompt: write background/analysis for `q` without answering it."""
  if has_chat_template(tokenizer):
    return render_chat(tokenizer, config.background.format(**_fields(q)), config)
  return config.plain_background.format(**_fields(q))


def t2t_receiver_prompt(q: Question, background: str, tokenizer: Any = None,
                        config: PromptConfig = DEFAULT) -> str:
  """The T2T receiver's prompt: the MCQ prompt with the sharer's `background` as context."""
  return mcq_prompt(q, tokenizer, config, background=background)


def cloze_prompt(q: Question, config: PromptConfig = DEFAULT) -> tuple[str, tuple[str, ...]]:
  """(context, continuations) for log-likelihood scoring: the chosen option is the argmax of
  log p(continuation | context) (lm-evaluation-harness also reports a length-normalised one).
  The context ends with ``config.reply_prefix``."""
  return (config.cloze.format(question=q.question) + config.reply_prefix,
          tuple(f" {c}" for c in q.choices))
