"""The systems an evaluation config names, built from its models and fuser checkpoints.

``receiver`` and ``sharer`` answer alone; ``t2t``: the sharer first writes a background for
the question (``prompts.background_prompt``, greedy, a token budget) and the receiver answers
with it in its prompt (``t2t_receiver_prompt``); ``c2c``: the receiver answers on its cache
fused from the first sharer's; ``c2c_multi``: from all sharers.

Questions with a private document (``Question.context``, the ``synthetic_docs`` benchmark):
``receiver`` and ``c2c`` never show it to the receiver; ``receiver_doc`` / ``sharer_doc``
answer with it in their prompt (as a background: the upper bounds); the T2T writer reads it
before its background request; ``c2c`` and ``c2c_self`` (the receiver model as its own
sharer, ``config.self_fusers``) fuse from sharers that read it first (C2C's sharer context);
``oracle`` is the training-free cache enrichment: the receiver prefills document + question
and keeps only the question's slots (a cache as long as ``receiver``'s); ``sharer_oracle``
is the same with the sharer answering on its own slots: whether the question's slots of the
cache C2C fuses from carry the answer at all.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Callable

import jax
import jax.numpy as jnp

from c2cjax import files, fuse as fuse_lib
from c2cjax.c2c import C2C
from c2cjax.fuse import Fuser
from c2cjax.evaluation.answerers import Enriched, Fused, Solo, System

SYSTEMS = ("receiver", "sharer", "t2t", "c2c", "c2c_multi", "receiver_doc", "sharer_doc",
           "c2c_self", "oracle", "sharer_oracle")
_RECEIVER_ONLY = {"receiver", "receiver_doc", "c2c_self", "oracle"}


def config_names(config, key: str, known: Sequence[str] | None = None) -> tuple[str, ...]:
  """``config[key]`` as a tuple of strings, each one of ``known`` (when given).

  Raises:
    ValueError: a string instead of a tuple, or an unknown name (a comma inside one name
      hints at the old comma-separated style).
  """
  value = config.get(key)
  if value is None:
    return ()
  if isinstance(value, str):
    raise ValueError(f"config.{key} must be a tuple of names, got the string {value!r}; "
                     f"e.g. --config.{key}=\"('a', 'b')\"")
  names = tuple(str(v) for v in value)
  unknown = [n for n in names if known is not None and n not in known]
  if unknown:
    hint = (f"; tuples on the command line: --config.{key}=\"('a', 'b')\", not a,b"
            if any("," in n for n in unknown) else "")
    raise ValueError(f"unknown config.{key} {unknown}; choose from {tuple(known)}{hint}")
  return names


def open_gates(fuser: Fuser, logit: float = 1.0) -> Fuser:
  """The same fuser with every key/value gate open (smoke runs, latency: the cost is paid)."""
  params = dict(fuser.params)
  for k in ("key_gate_logit", "value_gate_logit"):
    params[k] = jnp.full_like(params[k], logit)
  return dataclasses.replace(fuser, params=params)


def load_fusers(path, prune: bool = True) -> list[Fuser]:
  """The fuser(s) of a ``fuse.save`` checkpoint (several for a multi-sharer run), each with
  the receiver and its sharer the checkpoint records (``Fuser.models``: C2C checks them).

  ``prune`` drops layer pairs whose gates are both closed: with inference's hard gates they
  are the identity, so answers are unchanged and C2C prefill gets cheaper.
  """
  params, config, layer_map, meta = fuse_lib.load(path)
  scheme = fuse_lib.checkpoint_alignment(meta)
  fusers = [Fuser(p, c, m, scheme, meta.get("layer_map_name"),
                  fuse_lib.checkpoint_models(meta, i))
            for i, (p, c, m) in enumerate(zip(params, config, layer_map))]
  return [f.pruned() for f in fusers] if prune else fusers


def prompt_options(path, config) -> dict[str, bool]:
  """How a fuser checkpoint's training fused its prompts, as :class:`Fused` options:
  ``fuse_last`` and ``fuse_reply`` (its ``reply_prefix`` fused with the prompt).

  Raises:
    ValueError: the fuser was trained with a reply prefix the evaluation prompts lack.
  """
  meta = files.read_json(pathlib.Path(path) / "fuser" / "metadata", "fuser metadata")
  meta = meta.get("meta", {})
  trained = meta.get("reply_prefix", "")
  if trained and trained != config.prompts.get("reply_prefix", ""):
    raise ValueError(f"the fuser {path} was trained with reply_prefix {trained!r} fused with "
                     f"the prompt; set --config.prompts.reply_prefix={trained!r} (got "
                     f"{config.prompts.get('reply_prefix', '')!r})")
  return {"fuse_last": bool(meta.get("fuse_last", False)), "fuse_reply": bool(trained)}


def build_systems(config, log: Callable[[str], None] = print) -> list[System]:
  """Loads the models and fusers the requested systems need (skipping C2C without one)."""
  from c2cjax.models.load import resolve  # pylint: disable=import-outside-toplevel

  names = config_names(config, "systems", SYSTEMS)
  dtype = jnp.dtype(config.dtype)
  receiver = resolve(config.receiver, dtype, seed=config.seed)
  specs = config_names(config, "sharers")
  if not specs and set(names) - _RECEIVER_ONLY:
    raise ValueError(f"systems {names} need at least one sharer (config.sharers)")
  want = len(specs) if "c2c_multi" in names else int(bool(set(names) - _RECEIVER_ONLY))
  sharers = [resolve(s, dtype, seed=config.seed + 1 + i) for i, s in enumerate(specs[:want])]

  fusers: list[Fuser] | None = None
  options: dict[str, bool] = {}  # the first checkpoint's (see prompt_options)
  if {"c2c", "c2c_multi"} & set(names):
    fusers, missing = [], []
    for path in config_names(config, "fusers"):
      if pathlib.Path(path).exists():
        fusers += load_fusers(path)
        options = options or prompt_options(path, config)
      else:
        missing.append(path)
    if missing and config.random_fuser:
      log(f"fuser checkpoint(s) {missing} not found: using freshly initialised fusers with "
          "gates forced open (random_fuser=True, a smoke run; accuracy means nothing)")
      rng = jax.random.PRNGKey(config.seed)
      fusers = [open_gates(Fuser.init(receiver, s, jax.random.fold_in(rng, i)))
                for i, s in enumerate(sharers)]
    elif missing or not fusers:
      log(f"fuser checkpoint(s) {missing or '(none given)'} not found: skipping systems "
          f"{sorted({'c2c', 'c2c_multi'} & set(names))} (train one with `python -m "
          "c2cjax.train`, or pass --config.random_fuser=True for a smoke run)")
      fusers = None

  kw = dict(mode=config.fusion_mode, alignment=config.alignment or None,
            strategy=config.get("alignment_strategy", "first"),
            allow_mismatch=bool(config.get("allow_mismatch", False)))
  systems = []
  for name in names:
    if name == "receiver":
      systems.append(System(name, Solo(receiver)))
    elif name == "receiver_doc":
      systems.append(System(name, Solo(receiver), document="prompt"))
    elif name == "sharer_doc":
      systems.append(System(name, Solo(sharers[0]), document="prompt"))
    elif name == "oracle":
      systems.append(System(name, Enriched(receiver), document="sharer"))
    elif name == "sharer_oracle":
      systems.append(System(name, Enriched(sharers[0]), document="sharer"))
    elif name == "c2c_self":
      paths = [p for p in config_names(config, "self_fusers") if pathlib.Path(p).exists()]
      if not paths:
        log(f"self fuser {config_names(config, 'self_fusers')} not found: c2c_self skipped")
        continue
      systems.append(System(name, Fused(C2C(receiver, [receiver], load_fusers(paths[0])[:1],
                                            **kw), **prompt_options(paths[0], config)),
                            document="sharer"))
    elif name == "sharer":
      systems.append(System(name, Solo(sharers[0])))
    elif name == "t2t":
      systems.append(System(name, Solo(receiver), writer=Solo(sharers[0])))
    elif name == "c2c" and fusers is not None:
      systems.append(System(name, Fused(C2C(receiver, sharers[:1], fusers[:1], **kw),
                                        **options), document="sharer"))
    elif name == "c2c_multi" and fusers is not None:
      if len(sharers) < 2 or len(fusers) != len(sharers):
        log(f"c2c_multi needs >= 2 sharers and one fuser each ({len(sharers)} sharers, "
            f"{len(fusers)} fusers): skipped")
        continue
      systems.append(System(name, Fused(C2C(receiver, sharers, fusers, **kw), **options)))
  # One Solo per model, so T2T backgrounds (cached per writer) are shared.
  by_lm: dict[int, Solo] = {}
  def share(s):
    return by_lm.setdefault(id(s.lm), s) if type(s) is Solo else s
  return [dataclasses.replace(s, answerer=share(s.answerer),
                              writer=None if s.writer is None else share(s.writer))
          for s in systems]
