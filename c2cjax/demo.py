"""Generates from the receiver alone, the sharer alone and C2C on the same prompts.

    python -m c2cjax.demo [--fuser runs/local/fuser] [--receiver offline:smollm2]
                          [--sharer offline:gemma3] [--max_new_tokens 48]
                          [--allow_mismatch]

Without ``--fuser``, while the default ``runs/local/fuser`` does not exist yet, a fresh fuser
is used: its gates are closed at initialisation, so C2C then answers exactly like the
receiver alone. A ``--fuser`` given on the command line must be a fuser checkpoint; what
is wrong with it (missing, a run directory, a released-format folder, a fuser for other
models) is one line on stderr, checked before the models load where it can be.
"""

from __future__ import annotations

import pathlib
import time

from absl import app, flags

FLAGS = flags.DEFINE_string("fuser", "runs/local/fuser", "trained fuser directory")
RECEIVER = flags.DEFINE_string("receiver", "offline:smollm2", "receiver model spec")
SHARER = flags.DEFINE_string("sharer", "offline:gemma3", "sharer model spec")
MAX_NEW = flags.DEFINE_integer("max_new_tokens", 48, "tokens to generate", lower_bound=1)
ALLOW_MISMATCH = flags.DEFINE_boolean(
    "allow_mismatch", False, "run a fuser on other models than it was trained for, with a "
    "warning (research use)")

PROMPTS = (
    "What is the boiling point of water at sea level, in Celsius?",
    "Give one reason why the sky looks blue.",
    "Write a Python function that returns the square of a number.",
)


def _fuser_path() -> pathlib.Path | None:
  """The fuser checkpoint to load, checked (exit 2 naming the problem), or None for a
  fresh fuser: only while the default path does not exist yet."""
  from c2cjax.config_check import exit_with
  from c2cjax.fuse.io import check_checkpoint_dir

  path = pathlib.Path(FLAGS.value)
  if not flags.FLAGS["fuser"].present and not path.exists():
    return None
  try:
    check_checkpoint_dir(path)
  except (OSError, ValueError) as e:
    exit_with(f"c2cjax.demo: --fuser: {e}", 2)
  return path


def main(argv):
  del argv
  import jax
  from absl import logging as absl_logging

  from c2cjax.c2c import C2C, Fuser
  from c2cjax.config_check import exit_with
  from c2cjax.models.load import resolve
  from c2cjax.runtime import enable_compilation_cache

  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it reads at INFO
  path = _fuser_path()  # before the models load
  enable_compilation_cache()  # a second demo run loads its compiled programs
  try:
    receiver, sharer = resolve(RECEIVER.value), resolve(SHARER.value)
    if path is not None:
      fuser, note = Fuser.load(path), f"trained fuser from {path}"
    else:
      fuser = Fuser.init(receiver, sharer, jax.random.PRNGKey(0))
      note = f"no fuser at {FLAGS.value}: fresh fuser (closed gates: C2C == receiver alone)"
    c2c = C2C(receiver, [sharer], [fuser.pruned()], allow_mismatch=ALLOW_MISMATCH.value)
  except (OSError, ValueError) as e:  # files.CorruptFileError is a ValueError
    exit_with(f"c2cjax.demo: error: {' '.join(str(e).split())}", 1)
  print(f"receiver {receiver}\nsharer   {sharer}\n{note}\n")
  systems = {
      "receiver": lambda: receiver.generate(list(PROMPTS), max_new_tokens=MAX_NEW.value,
                                            chat=True),
      "sharer": lambda: sharer.generate(
          [f"Question: {p}\nAnswer:" for p in PROMPTS] if not sharer.tokenizer.chat_template else
          [[{"role": "user", "content": p}] for p in PROMPTS],
          max_new_tokens=MAX_NEW.value),
      "c2c": lambda: c2c.generate(list(PROMPTS), max_new_tokens=MAX_NEW.value),
  }
  for name, run in systems.items():
    run()  # compile
    t = time.perf_counter()
    outs = run()
    dt = time.perf_counter() - t
    print(f"=== {name} ({dt:.2f} s for {len(PROMPTS)} prompts, batched)")
    for p, o in zip(PROMPTS, outs):
      print(f"Q: {p}\nA: {o.strip()}\n")


if __name__ == "__main__":
  from c2cjax.config_check import flags_parser
  app.run(main, flags_parser=flags_parser("c2cjax.demo"))  # a bad flag: one line, exit 2
