"""Training-config checks that run before anything loads, and config differences.

* :func:`validate_train_config` checks every field of a training config (``configs/``) and
  raises one :class:`ConfigError` listing every bad field, one line each.
* :func:`unknown_field_message` turns an unknown ``--config.x`` into one line with the
  nearest real fields.
* :func:`count_arg` is an argparse type for counts (the CLIs' and benchmarks' flags).
* :func:`flatten` / :func:`differences` compare two configs field by field (dotted names);
  :data:`SAFE_TO_CHANGE` names the fields a resumed run may change with
  ``--allow_config_change`` and why each is safe.
"""

from __future__ import annotations

import argparse
import difflib
import math
from typing import Any, Callable, Mapping


def count_arg(lo: int):
  """An argparse type: an integer >= ``lo`` (a bad count is a usage error, exit 2, one line
  naming the flag, before anything loads)."""
  def parse(text: str) -> int:
    try:
      v = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < lo:
      raise argparse.ArgumentTypeError(f"{v} must be >= {lo}")
    return v
  return parse


LLM_DTYPES = ("auto", "float32", "bfloat16")
LAYER_MAPS = ("last_aligned", "k_nearest", "last_aligned_clamped")
FUSION_MODES = ("parallel", "sequential")

# Fields a resumed run may change (with --allow_config_change), and why that is safe.
# ``workdir`` is never compared: the run directory is where the manifest lives.
SAFE_TO_CHANGE: dict[str, str] = {
    "max_steps": "run length; the learning-rate schedule is recomputed for the new total",
    "num_epochs": "run length; the learning-rate schedule is recomputed for the new total",
    "log_every": "logging only", "progress_bar": "logging only", "tensorboard": "logging only",
    "eval_every": "held-out evaluation only", "eval_batches": "held-out evaluation only",
    "eval_batch_size": "held-out evaluation only",
    "checkpoint_every": "when checkpoints are written",
    "keep_checkpoints": "how many checkpoints are kept",
    "async_checkpointing": "how checkpoints are written",
    "per_device_batch_size": "how the same global batch is split into micro-batches (the step "
                             "averages over the global batch: same result up to rounding)",
    "mesh.*": "how the same global batch and params are laid out over devices",
    "remat": "what the backward pass keeps or recomputes (the same gradients)",
    "pairs_at_once": "how many fuser pairs are computed together (the same results up to "
                     "rounding)",
    "data.data_dir": "where the same dataset is stored",
    "data.manual_dir": "where the same dataset's manual downloads are",
}
_NEVER_COMPARED = ("workdir",)


class ConfigError(ValueError):
  """Bad config fields; ``problems`` holds one message per field."""

  def __init__(self, problems: list[str], header: str = "invalid config"):
    self.problems = list(problems)
    super().__init__(f"{header}:\n" + "\n".join(f"  {p}" for p in self.problems))


# --- flattening and differences --------------------------------------------------------------
def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"optimizer.lr": 1e-4, ...}``; tuples become lists (as after a JSON round trip)."""
  out = {}
  for k in sorted(cfg.keys()):
    v = cfg[k]
    if hasattr(v, "keys"):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
  return out


def _is_safe(field: str) -> bool:
  return any(field == s or (s.endswith(".*") and field.startswith(s[:-1]))
             for s in SAFE_TO_CHANGE)


# Fields added after runs were started, with the value that behaves as before they existed:
# a run's manifest without the field matches that value (old runs still resume).
ADDED_FIELDS = {"data.reply_prefix": "", "fuser.gate_init": 0.0, "pairs_at_once": 1}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
  """Flat field -> (old value, new value) where they differ (``<missing>`` if absent; a
  field of ``ADDED_FIELDS`` absent from ``old`` counts as its as-before value)."""
  a, b = flatten(old), flatten(new)
  out = {}
  for k in sorted(set(a) | set(b)):
    if k in _NEVER_COMPARED:
      continue
    va = a.get(k, ADDED_FIELDS.get(k, "<missing>"))
    vb = b.get(k, "<missing>")
    if va != vb:
      out[k] = (va, vb)
  return out


def split_safe(diff: Mapping[str, tuple[Any, Any]]) -> tuple[dict, dict]:
  """(safe, unsafe) parts of :func:`differences`."""
  safe = {k: v for k, v in diff.items() if _is_safe(k)}
  return safe, {k: v for k, v in diff.items() if k not in safe}


def unknown_field_message(cfg: Mapping[str, Any], field: str) -> str:
  """One line: ``unknown config field 'optimizer.lrr' (did you mean optimizer.lr?)``."""
  keys = list(flatten(cfg))
  near = difflib.get_close_matches(field, keys, n=3, cutoff=0.6)
  leaf = field.rsplit(".", 1)[-1]
  leaves = {k: k.rsplit(".", 1)[-1] for k in keys}
  near += [k for k in keys if k not in near and k.rsplit(".", 1)[-1] in
           difflib.get_close_matches(leaf, set(leaves.values()), n=3, cutoff=0.75)]
  hint = f" (did you mean {', '.join(near[:4])}?)" if near else " (no similar field)"
  return f"unknown config field {field!r}{hint}"


# --- validation --------------------------------------------------------------------------------
_MISSING = object()


def _get(cfg, field: str):
  node = cfg
  for part in field.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return _MISSING
  return node


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(lo: int | None = None) -> Callable[[Any], str | None]:
  """A rule: an integer (``>= lo``). Rules return None or why the value is bad."""
  def check(v):
    if not _is_int(v) or (lo is not None and v < lo):
      return f"must be an integer >= {lo}" if lo is not None else "must be an integer"
    return None
  return check


def _num(lo: float, hi: float | None = None, *, lo_open=False, hi_open=False):
  def check(v):
    ok = _is_num(v) and (v > lo if lo_open else v >= lo)
    if hi is not None:
      ok = ok and (v < hi if hi_open else v <= hi)
    if ok:
      return None
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    return (f"must be a finite number in {left}{lo}, {hi}{right}" if hi is not None else
            f"must be a finite number {'>' if lo_open else '>='} {lo}")
  return check


def _one_of(*choices):
  def check(v):
    return None if v in choices else f"must be one of {', '.join(map(repr, choices))}"
  return check


def _boolean(v):
  return None if isinstance(v, bool) else "must be True or False"


def or_none(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
  """A rule: None, or what ``check`` accepts."""
  return lambda v: None if v is None else check(v)


def nonempty(v):
  """A rule: a non-empty string."""
  return None if isinstance(v, str) and v.strip() else "must be a non-empty string"


def _rules() -> dict[str, Callable[[Any], str | None]]:
  from c2cjax import sections
  from c2cjax.models.layers import REMAT_POLICIES
  pos, nonneg = integer(1), integer(0)
  return {
      "receiver": nonempty, "llm_dtype": _one_of(*LLM_DTYPES), "seed": integer(),
      "self_fusion": _boolean, "remat": _one_of("none", *sorted(REMAT_POLICIES)),
      "layer_map": _one_of(*LAYER_MAPS), "alignment": _one_of(*sections.SCHEMES),
      "fusion_mode": _one_of(*FUSION_MODES), "pass2_parts": nonneg, "pairs_at_once": pos,
      "fuser.hidden_dim": pos, "fuser.intermediate_dim": pos, "fuser.num_layers": integer(3),
      "fuser.dropout": _num(0.0, 1.0, hi_open=True),
      "fuser.initial_temperature": _num(0.0, lo_open=True),
      "fuser.final_temperature": _num(0.0, lo_open=True), "fuser.anneal_steps": pos,
      "fuser.gate_init": _num(-50.0, 50.0),
      "data.source": nonempty, "data.max_len": integer(2), "data.max_examples": nonneg,
      "data.heldout_fraction": _num(0.0, 1.0, hi_open=True), "data.read_threads": pos,
      "data.worker_count": nonneg, "data.prefetch_batches": nonneg,
      "data.split_seed": integer(), "data.seed": integer(),
      "per_device_batch_size": pos, "global_batch_size": pos,
      "optimizer.lr": _num(0.0, lo_open=True), "optimizer.final_lr": _num(0.0),
      "optimizer.warmup_fraction": _num(0.0, 1.0), "optimizer.weight_decay": _num(0.0),
      "optimizer.grad_clip": _num(0.0, lo_open=True),
      "optimizer.b1": _num(0.0, 1.0, hi_open=True), "optimizer.b2": _num(0.0, 1.0, hi_open=True),
      "log_every": pos, "eval_every": nonneg, "eval_batch_size": pos, "eval_batches": nonneg,
      "checkpoint_every": pos, "keep_checkpoints": pos, "async_checkpointing": _boolean,
      "tensorboard": _boolean, "progress_bar": _boolean,
  }


def field_problems(cfg, rules: Mapping[str, Callable[[Any], str | None]], *,
                   required: bool = True) -> list[str]:
  """``"field=value: why"`` for each dotted field of ``cfg`` that breaks its rule, and
  ``"field: missing"`` for an absent one when ``required``."""
  problems = []
  for field, check in rules.items():
    v = _get(cfg, field)
    if v is _MISSING:
      if required:
        problems.append(f"{field}: missing")
    elif (msg := check(v)) is not None:
      problems.append(f"{field}={v!r}: {msg}")
  return problems


def validate_train_config(cfg) -> None:
  """Raises :class:`ConfigError` naming every bad field of a training config at once."""
  from c2cjax import sections
  optional = {"fuse_last": _boolean, "fuse_response": _boolean,
              "alignment_strategy": _one_of(*sections.STRATEGIES),
              "data.max_fused_runs": integer(1),
              "data.reply_prefix": lambda v: None if isinstance(v, str) else "must be a string"}
  problems = field_problems(cfg, _rules()) + field_problems(cfg, optional, required=False)
  sharers, self_fusion = _get(cfg, "sharers"), _get(cfg, "self_fusion")
  if self_fusion is not True and (not isinstance(sharers, (tuple, list)) or not sharers
                                  or any(nonempty(s) for s in sharers)):
    problems.append(f"sharers={sharers!r}: must be a non-empty tuple of model names "
                    "(or set self_fusion=True)")
  max_steps, epochs = _get(cfg, "max_steps"), _get(cfg, "num_epochs")
  if max_steps is _MISSING:
    problems.append("max_steps: missing")
  elif not _is_int(max_steps) or not (max_steps > 0 or max_steps == -1):
    problems.append(f"max_steps={max_steps!r}: must be a positive step count, or -1 to train "
                    "num_epochs epochs")
  elif max_steps == -1 and (not _is_int(epochs) or epochs <= 0):
    problems.append(f"num_epochs={epochs!r}: must be >= 1 when max_steps=-1 (with "
                    f"num_epochs={epochs!r} the run would have no training step)")
  buckets = _get(cfg, "data.bucket_lengths")
  if buckets is not _MISSING and (not isinstance(buckets, (tuple, list))
                                  or any(not _is_int(b) or b <= 0 for b in buckets)):
    problems.append(f"data.bucket_lengths={buckets!r}: must be a tuple of positive lengths")
  g, p = _get(cfg, "global_batch_size"), _get(cfg, "per_device_batch_size")
  if _is_int(g) and _is_int(p) and g > 0 and p > 0 and g % p:
    problems.append(f"global_batch_size={g}: must be a multiple of per_device_batch_size={p} "
                    "(times the data-parallel devices)")
  mesh = _get(cfg, "mesh")
  if mesh is not _MISSING:
    axes = flatten(mesh)
    for k, v in axes.items():
      if not _is_int(v) or not (v >= 1 or v == -1):
        problems.append(f"mesh.{k}={v!r}: must be a positive device count or -1 (the rest)")
    if sum(v == -1 for v in axes.values()) > 1:
      problems.append(f"mesh={axes}: at most one axis may be -1")
  if problems:
    raise ConfigError(problems, "invalid training config")


# --- command lines -------------------------------------------------------------------------------
def exit_with(message: str, code: int, *, hard: bool = False):
  """Prints ``message`` to stderr and exits with ``code`` (``hard``: ``os._exit``, for when
  background threads, such as orbax's after a failed write, would hold the exit)."""
  import os
  import sys
  print(message, file=sys.stderr, flush=True)
  if hard:
    sys.stdout.flush()
    os._exit(code)
  sys.exit(code)


def _base_config(argv):
  """The ``--config path[:arg]`` of ``argv``, loaded without its overrides (None if that
  fails). ml_collections reads overrides from ``sys.argv`` when it loads a file, so the file
  is loaded here directly: its ``get_config([arg])``."""
  import importlib.util
  spec = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      spec = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      spec = argv[i + 1]
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  try:
    module_spec = importlib.util.spec_from_file_location("_c2cjax_base_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except
    return None


def flags_parser(prog: str):
  """An ``app.run(..., flags_parser=...)`` for CLIs with a ``--config`` file flag: a bad
  flag, a bad value or an unknown ``--config.x`` is one line on stderr and exit code 2
  (instead of chained tracebacks), unknown fields with their nearest real names."""

  def parse(argv):
    from absl import flags
    try:
      return flags.FLAGS(argv)
    except Exception as e:  # ml_collections raises AttributeError/KeyError for unknown keys
      cfg = _base_config(argv)
      msgs = []
      if cfg is not None:
        known = flatten(cfg)
        for arg in argv[1:]:
          if arg.startswith("--config."):
            field = arg[len("--config."):].split("=", 1)[0]
            if field not in known and not any(k.startswith(field + ".") for k in known):
              msgs.append(unknown_field_message(cfg, field))
      msg = str(e) if isinstance(e, flags.Error) else f"{type(e).__name__}: {e}"
      lines = [line for line in msg.splitlines() if line.strip()]
      if "Traceback (most recent call last):" in msg:  # a config file that raised
        msg = f"{lines[0]} {lines[-1]}"
      exit_with(f"{prog}: " + ("; ".join(msgs) or msg), 2)

  return parse
