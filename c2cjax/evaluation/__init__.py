"""Multiple-choice evaluation; ``python -m c2cjax.eval`` is its command line.

Model-independent (exported here):
  datasets    MMLU-Redux, ARC-Challenge, OpenBookQA (shipped in files/), C-Eval (path / hub)
  prompts     zero-shot chat-template MCQ prompts, cloze prompts, text-to-text (T2T) prompts
  parse       the option letter in a model's reply (`parse_answer`)
  report      accuracy with Wilson CIs, latency, tokens -> JSON, Markdown and a bar chart
On models (import the module):
  answerers   Solo (one LM) and Fused (C2C) answerers, System, left-padded bucketed batches
  runner      Evaluator: systems x questions x methods (logits, cloze, generate) -> Prediction
  systems     the systems a config names, built from its models and fuser checkpoints
  merge       outputs of a run; merging the outputs of runs in parts (shards)
  experiment  one run from a config: questions, systems, predictions, reports (`run`)
"""

from c2cjax.evaluation.datasets import (BENCHMARKS, CEVAL_CATEGORIES, MMLU_CATEGORIES,
                                        HubError, Question, load_arc_challenge,
                                        load_benchmark, load_ceval, load_mmlu_redux,
                                        load_openbookqa, select)
from c2cjax.evaluation.parse import parse_answer
from c2cjax.evaluation.prompts import (PromptConfig, background_prompt, cloze_prompt,
                                       format_options, mcq_prompt, t2t_receiver_prompt)
from c2cjax.evaluation.report import (Record, load_records, save_records, summarize,
                                      wilson_interval, write_report)

__all__ = [
    "BENCHMARKS", "CEVAL_CATEGORIES", "MMLU_CATEGORIES", "HubError", "PromptConfig",
    "Question", "Record", "background_prompt", "cloze_prompt", "format_options",
    "load_arc_challenge", "load_benchmark", "load_ceval", "load_mmlu_redux", "load_openbookqa",
    "load_records", "mcq_prompt", "parse_answer", "save_records", "select", "summarize",
    "t2t_receiver_prompt", "wilson_interval", "write_report",
]
