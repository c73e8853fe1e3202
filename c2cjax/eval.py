"""Multiple-choice evaluation of receiver, sharer, text-to-text (T2T) and C2C systems.

  python -m c2cjax.eval --config configs/eval_local.py [--config.limit=50] \\
      [--config.benchmarks="('arc_challenge', 'openbookqa')"] [--config.subjects=anatomy] \\
      [--config.methods="('logits', 'cloze', 'generate')"] [--config.systems="('c2c',)"]

Lists are tuples: one Python literal, or the flag repeated once per item
(``--config.methods=logits --config.methods=cloze``); a single name is a tuple of one.
Long runs in parts: ``--config.shard=k/n`` evaluates every n-th question from the k-th (per
benchmark, after ``limit`` and ``subjects``); then ``--config.merge="('dir1', 'dir2')"``
(their ``{output_dir}/{name}`` folders) writes the reports of all their predictions into
this run's folder without loading a model. The config's fields: ``c2cjax.defaults``; the
work: ``c2cjax.evaluation.experiment.run``.
"""

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from c2cjax import config_check, files
from c2cjax.evaluation import experiment
from c2cjax.runtime import enable_compilation_cache

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file("config", None, "evaluation config file", lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"too many command-line arguments: {argv[1:]}")
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file at INFO
  enable_compilation_cache()  # the next shard or run loads its compiled shapes
  try:
    experiment.run(FLAGS.config)
  except config_check.ConfigError as e:
    config_check.exit_with(f"c2cjax.eval: {e}", 2)
  except (OSError, files.CorruptFileError) as e:  # a model, fuser or data file not readable
    config_check.exit_with(f"c2cjax.eval: error: {' '.join(str(e).split())}", 1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=config_check.flags_parser("c2cjax.eval"))
