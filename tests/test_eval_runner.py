"""The evaluation runner on tiny random models with a tiny character tokenizer."""

import dataclasses
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from c2cjax import fuse as fuse_lib
from c2cjax.c2c import C2C
from c2cjax.fuse import Fuser
from c2cjax.defaults import eval_config
from c2cjax.evaluation import PromptConfig, Question, cloze_prompt, mcq_prompt
from c2cjax.evaluation.answerers import Fused, Solo, System, bucket, letter_token_ids
from c2cjax.evaluation.experiment import load_questions, parse_shard
from c2cjax.evaluation.merge import merge, write_outputs
from c2cjax.evaluation.runner import Evaluator, Settings
from c2cjax.evaluation.systems import SYSTEMS, config_names, load_fusers, open_gates
from c2cjax.models.tiny import tiny_lm

SPECIALS = ("<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>", "<unk>")
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def char_tokenizer(reverse: bool = False, chat: bool = True):
  """Characters as tokens (" A".." E" merged into one), ChatML specials, offsets."""
  from tokenizers import Tokenizer, decoders, models
  from transformers import PreTrainedTokenizerFast

  chars = "\n" + "".join(chr(i) for i in range(32, 127))
  vocab = {t: i for i, t in enumerate(SPECIALS)}
  vocab.update({c: len(vocab) + i for i, c in enumerate(chars[::-1] if reverse else chars)})
  merges = [(" ", x) for x in "ABCDE"]
  vocab.update({a + b: len(vocab) + i for i, (a, b) in enumerate(merges)})
  tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
  tok.decoder = decoders.Fuse()
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                 eos_token="<eos>", unk_token="<unk>",
                                 extra_special_tokens=["<|im_start|>", "<|im_end|>"])
  if chat:
    fast.chat_template = CHATML
  return fast


QUESTIONS = [
    Question("t/anatomy/0", "t", "anatomy", "bio", "Which bone is in the arm?",
             ("femur", "humerus", "tibia", "skull"), 1),
    Question("t/anatomy/1", "t", "anatomy", "bio", "How many hearts?", ("one", "two", "three"), 0),
    Question("t/astronomy/0", "t", "astronomy", "phys", "Closest star to Earth?",
             ("Sirius", "the Sun", "Vega", "Polaris", "Rigel"), 1),
    Question("t/astronomy/1", "t", "astronomy", "phys", "What orbits the Earth?",
             ("the Moon", "Mars", "a comet with a very long name", "Io"), 0),
    Question("t/astronomy/2", "t", "astronomy", "phys", "Red planet?",
             ("Venus", "Mars", "Earth", "Saturn"), 1),
]

PROMPTS = PromptConfig(
    mcq="{question}\n{options}\nReply with {letters}.",
    background="Q: {question}\n{options}\nHelp:",
    context="Notes: {background}\n{prompt}", plain_mcq="Q: {question}\n{options}\nAnswer:",
    plain_background="Q: {question}\n{options}\nNotes:", plain_context="{background}\n{prompt}")
# One bucket each: every batch of a kind has one shape (compiles dominate this test's time).
SETTINGS = Settings(batch_size=2, cloze_batch_size=2, buckets=(160,),
                    continuation_buckets=(32,), max_new_tokens=4, background_tokens=4,
                    warmup=False, progress=False, prompts=PROMPTS)
METHODS = ("logits", "cloze", "generate")


@pytest.fixture(scope="module")
def models():
  rtok, stok = char_tokenizer(), char_tokenizer(reverse=True, chat=False)
  r, s = tiny_lm("qwen3", rtok, seed=0), tiny_lm("gemma3", stok, seed=1)
  fuser = lambda seed: Fuser.init(r, s, jax.random.PRNGKey(seed), hidden_dim=32,
                                  intermediate_dim=48)
  return dict(r=r, s=s, open1=open_gates(fuser(3)), open2=open_gates(fuser(4)),
              closed=open_gates(fuser(3), -1.0))


@pytest.fixture(scope="module")
def run(models):
  """Every system under every method, once (compiling dominates this file's time)."""
  m = models
  receiver, sharer = Solo(m["r"]), Solo(m["s"])
  systems = [System("receiver", receiver), System("sharer", sharer),
             System("t2t", receiver, writer=sharer),
             System("c2c", Fused(C2C(m["r"], [m["s"]], [m["open1"]]))),
             # two sharers (the same model, two fusers): the multi-sharer path
             System("c2c_multi", Fused(C2C(m["r"], [m["s"], m["s"]],
                                           [m["open1"], m["open2"]])))]
  evaluator = Evaluator(SETTINGS)
  preds = [p for s in systems for p in evaluator.evaluate(s, QUESTIONS, METHODS)]
  return systems, preds


def _by(preds, system, method):
  return {p.question_id: p for p in preds if p.system == system and p.method == method}


def test_every_system_and_method_runs_and_writes_reports(run, tmp_path):
  _, preds = run
  names = ("receiver", "sharer", "t2t", "c2c", "c2c_multi")
  for name in names:
    for method in ("logits", "cloze", "cloze_norm", "generate"):
      got = _by(preds, name, method)
      assert sorted(got) == sorted(q.id for q in QUESTIONS), (name, method)
      for q in QUESTIONS:
        p = got[q.id]
        bg = _by(preds, "t2t", "logits")[q.id].tokens_generated if name == "t2t" else 0
        assert p.time_s > 0 and p.answer == q.answer and 0 <= bg <= 4
        if method == "generate":
          assert 1 <= p.tokens_generated - bg <= 4
          assert p.pred is None or 0 <= p.pred < len(q.choices)
        else:  # no tokens of its own; T2T's are the background's
          assert len(p.scores) == len(q.choices) and p.pred == int(np.argmax(p.scores))
          assert p.tokens_generated == bg and (bg > 0) == (name == "t2t")
  # open gates: C2C and T2T really see something the receiver alone does not
  for other in ("c2c", "c2c_multi", "t2t"):
    a, b = _by(preds, "receiver", "cloze"), _by(preds, other, "cloze")
    scores = lambda d: np.concatenate([d[q.id].scores for q in QUESTIONS])
    assert not np.allclose(scores(a), scores(b), atol=1e-4), other

  paths = write_outputs(preds, {"t": QUESTIONS}, tmp_path)
  summary = json.loads(paths["cloze_norm.json"].read_text())
  assert summary["systems"] == list(names)
  assert summary["results"]["t"]["c2c"]["overall"]["n"] == len(QUESTIONS)
  assert paths["generate.chart"].stat().st_size > 0
  lines = paths["predictions"].read_text().splitlines()
  assert len(lines) == len(preds) and json.loads(lines[0])["system"] == "receiver"


def test_same_inputs_twice_give_the_same_predictions(run):
  systems, preds = run
  evaluator = Evaluator(SETTINGS)  # fresh: no cached backgrounds
  again = [p for s in systems for p in evaluator.evaluate(s, QUESTIONS, METHODS)]
  strip = lambda ps: [dataclasses.replace(p, time_s=0.0) for p in ps]
  assert strip(again) == strip(preds)


def test_c2c_with_closed_gates_equals_the_receiver_exactly(models, run):
  _, preds = run
  c2c = System("c2c", Fused(C2C(models["r"], [models["s"]], [models["closed"]])))
  fused = Evaluator(SETTINGS).evaluate(c2c, QUESTIONS, ("logits", "cloze"))
  for method in ("logits", "cloze", "cloze_norm"):
    alone, closed = _by(preds, "receiver", method), _by(fused, "c2c", method)
    for q in QUESTIONS:
      assert closed[q.id].scores == alone[q.id].scores
      assert closed[q.id].pred == alone[q.id].pred


def _cloze_ids(tok, q):
  ctx, options = cloze_prompt(q, PROMPTS)
  ids = tok(ctx)["input_ids"]
  return ctx, ids, [tok(ctx + o)["input_ids"][len(ids):] for o in options]


def _continuation_logprob(steps, cont):
  """Sum of log p(cont[t]) for steps[t] [V], the logits that predict cont[t]."""
  lp = jax.nn.log_softmax(np.asarray(steps, np.float64), axis=-1)
  return float(sum(lp[t, c] for t, c in enumerate(cont)))


def _right_padded_forward(lm, ids, width):
  """Logits [len(ids), V] of one unpadded sequence (right padding is causally invisible)."""
  tokens = np.zeros((1, width), np.int32)
  tokens[0, :len(ids)] = ids
  logits, _ = lm.apply(lm.params, tokens)
  return np.asarray(logits)[0, :len(ids)]


def test_scores_equal_a_direct_per_option_forward(models, run):
  r, s = models["r"], models["s"]
  systems, preds = run
  # one question alone: a batch of one (no repeated rows), same scores as in a batch
  alone = Evaluator(SETTINGS).evaluate(systems[0], QUESTIONS[-1:], ("logits",))
  np.testing.assert_allclose(alone[0].scores, _by(preds, "receiver", "logits")[
      QUESTIONS[-1].id].scores, rtol=1e-5, atol=1e-4)
  tok = r.tokenizer
  c2c = C2C(r, [s], [models["open1"]])
  letter_ids = letter_token_ids(tok, 5)
  assert letter_ids[0] == [tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids(" A")]
  for n, q in enumerate(QUESTIONS):
    ctx, ids, conts = _cloze_ids(tok, q)
    want, want_c2c = [], []
    for cont in conts:  # one full forward of context + option per option
      logits = _right_padded_forward(r, ids + cont, 96)
      want.append(_continuation_logprob(logits[len(ids) - 1:-1], cont))
      if n < 2:  # C2C: the context fused alone, then the option on its cache
        sharer = c2c.aligners[0].align(ctx, True).sharer_ids
        last, cache = c2c.prefill(np.array([ids]), np.ones((1, len(ids)), np.int32),
                                  (sharer[None],), max_len=96)
        step_in = np.zeros((1, 32), np.int32)  # right-padded: causally invisible
        step_in[0, :len(cont) - 1] = cont[:-1]
        rest, _ = r.apply(r.params, step_in, cache)
        steps = np.concatenate([np.asarray(last)[:, None], np.asarray(rest)], axis=1)[0]
        want_c2c.append(_continuation_logprob(steps[:len(cont)], cont))
    tol = dict(rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(_by(preds, "receiver", "cloze")[q.id].scores, want, **tol)
    norm = np.array(want) / np.array([len(o) for o in cloze_prompt(q, PROMPTS)[1]])
    np.testing.assert_allclose(_by(preds, "receiver", "cloze_norm")[q.id].scores, norm, **tol)
    if want_c2c:
      np.testing.assert_allclose(_by(preds, "c2c", "cloze")[q.id].scores, want_c2c, **tol)
    last = _right_padded_forward(r, tok(mcq_prompt(q, tok, PROMPTS),
                                        add_special_tokens=False)["input_ids"], 160)[-1]
    letters = [max(last[i] for i in letter_ids[k]) for k in range(len(q.choices))]
    np.testing.assert_allclose(_by(preds, "receiver", "logits")[q.id].scores, letters, **tol)


def test_bucket_and_letter_ids():
  assert [bucket(n, (8, 16)) for n in (1, 8, 9, 16, 17, 33)] == [8, 8, 16, 16, 32, 48]
  tok = char_tokenizer()
  assert letter_token_ids(tok, 3)[2] == [tok.convert_tokens_to_ids("C"),
                                         tok.convert_tokens_to_ids(" C")]
  assert len(letter_token_ids(tok, 6)[5]) == 1  # " F" is two tokens: skipped


def test_load_fusers_prunes_closed_pairs(models, tmp_path):
  f = models["open1"]
  params = dict(f.params)
  for k in ("key_gate_logit", "value_gate_logit"):
    params[k] = params[k].at[0].set(-1.0)
  fuse_lib.save(tmp_path / "fuser", (params,), (f.config,), (f.layer_map,))
  (full,) = load_fusers(tmp_path / "fuser", prune=False)
  (pruned,) = load_fusers(tmp_path / "fuser")
  assert full.layer_map == f.layer_map
  assert pruned.layer_map.receiver == f.layer_map.receiver[1:]
  np.testing.assert_array_equal(pruned.params["key_gate_logit"], params["key_gate_logit"][1:])


def test_shards_partition_the_questions():
  config = eval_config()
  config.benchmarks, config.limit = ("arc_challenge",), 10
  whole = load_questions(config)["arc_challenge"]
  parts = []
  for k in range(3):
    config.shard = f"{k}/3"
    parts += load_questions(config)["arc_challenge"]
  assert len(parts) == 10 and sorted(q.id for q in parts) == sorted(q.id for q in whole)
  for bad in ("3/3", "1", "a/b", "-1/2"):
    with pytest.raises(ValueError, match="shard must be 'k/n'"):
      parse_shard(bad)


def test_merged_shards_give_the_whole_run_reports(run, tmp_path):
  _, preds = run
  config = eval_config()
  questions = {"t": QUESTIONS}
  whole = write_outputs(preds, questions, tmp_path / "whole", config)
  halves = ({q.id for q in QUESTIONS[:2]}, {q.id for q in QUESTIONS[2:]})
  for i, ids in enumerate(halves):
    config.shard = f"{i}/2"
    write_outputs([p for p in preds if p.question_id in ids], questions,
                  tmp_path / f"part{i}", config)
  merged = merge([tmp_path / "part0", tmp_path / "part1"], tmp_path / "merged")
  for key in ("logits.json", "cloze_norm.markdown", "generate.json"):
    assert merged[key].read_text() == whole[key].read_text(), key
  assert sorted(merged["predictions"].read_text().splitlines()) == sorted(
      whole["predictions"].read_text().splitlines())
  # a merged folder merges again; overlapping or different runs are refused by name
  merge([tmp_path / "merged"], tmp_path / "again")
  with pytest.raises(ValueError, match="overlapping parts"):
    merge([tmp_path / "part0", tmp_path / "whole"], tmp_path / "bad")
  config.receiver = "another/model"
  write_outputs(preds[:1], questions, tmp_path / "other", config)
  with pytest.raises(ValueError, match="differ in 'receiver'"):
    merge([tmp_path / "part0", tmp_path / "other"], tmp_path / "bad")
  with pytest.raises(FileNotFoundError, match="config.json"):
    merge([tmp_path / "nothing"], tmp_path / "bad")
  # parts written when lists were comma-separated strings merge with tuple-style ones
  old = json.loads((tmp_path / "part1" / "config.json").read_text())
  assert old["sharers"] == ["Qwen/Qwen2.5-0.5B-Instruct"]
  old.update(sharers="Qwen/Qwen2.5-0.5B-Instruct", fusers="runs/default/fuser")
  (tmp_path / "part1" / "config.json").write_text(json.dumps(old))
  again = merge([tmp_path / "part0", tmp_path / "part1"], tmp_path / "mixed")
  assert again["logits.json"].read_text() == whole["logits.json"].read_text()
  old["sharers"] = "Qwen/Qwen2.5-0.5B-Instruct,other/model"
  (tmp_path / "part1" / "config.json").write_text(json.dumps(old))
  with pytest.raises(ValueError, match="differ in 'sharers'"):
    merge([tmp_path / "part0", tmp_path / "part1"], tmp_path / "bad")


def test_config_lists_are_tuples_on_the_command_line():
  """ml_collections config_flags: a tuple is one Python literal or a repeated flag."""
  from absl import flags
  from ml_collections import config_flags

  def parse(*args):
    fv = flags.FlagValues()
    argv = ["eval", "--config=configs/eval_local.py", *args]
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv)
    return fv.config

  c = parse("--config.benchmarks=('arc_challenge', 'openbookqa')", "--config.limit=5",
            "--config.methods=logits", "--config.methods=generate", "--config.subjects=anatomy")
  assert c.benchmarks == ("arc_challenge", "openbookqa") and c.limit == 5
  assert c.methods == ("logits", "generate") and c.subjects == ("anatomy",)
  assert c.sharers == ("offline:gemma3",) and c.merge == ()
  assert parse("--config.merge=('a/local', 'b/local')").merge == ("a/local", "b/local")
  # the old comma style is one unknown name: refused with the tuple syntax as a hint
  c = parse("--config.benchmarks=arc_challenge,openbookqa")
  with pytest.raises(ValueError, match=r"unknown config.benchmarks .*\('a', 'b'\)"):
    load_questions(c)
  with pytest.raises(ValueError, match="must be a tuple of names"):
    config_names({"systems": "receiver,c2c"}, "systems", SYSTEMS)
  assert config_names({"systems": ("c2c",)}, "systems", SYSTEMS) == ("c2c",)


def test_finished_evaluation_is_never_overwritten(run, tmp_path):
  """``experiment.run`` into a folder holding a finished evaluation: the same config returns
  its reports untouched without loading a model; another config is refused by field."""
  from c2cjax.evaluation import experiment
  _, preds = run
  config = eval_config()
  config.output_dir, config.name = str(tmp_path), "done"
  config.receiver = "no/such-model"  # loading anything would fail
  config.sharers = ("no/such-model",)
  written = write_outputs(preds, {"t": QUESTIONS}, tmp_path / "done", config)
  before = {k: p.read_bytes() for k, p in written.items()}
  logged = []
  config.progress = not config.progress  # does not change results
  again = experiment.run(config, log=logged.append)
  assert again == written and {k: p.read_bytes() for k, p in again.items()} == before
  assert "already holds this evaluation" in logged[-1]
  fuser = tmp_path / "fuser"  # a fuser written again after the evaluation: refused
  (fuser / "fuser").mkdir(parents=True)
  (fuser / "fuser" / "metadata").write_text("{}")
  os.utime(fuser / "fuser" / "metadata", (2e9, 2e9))
  config.fusers = (str(fuser),)
  (tmp_path / "done" / "config.json").write_text(config.to_json_best_effort(indent=2))
  with pytest.raises(FileExistsError, match=f"before the fuser at {fuser} was written again"):
    experiment.run(config, log=logged.append)
  os.utime(fuser / "fuser" / "metadata", (1e9, 1e9))
  assert experiment.run(config, log=logged.append) == written
  config.limit = 3
  with pytest.raises(FileExistsError, match=r"holds an evaluation of another config \(limit: "
                                            r"None there, 3 now\); it is kept"):
    experiment.run(config, log=logged.append)
  assert all(p.read_bytes() == before[k] for k, p in written.items() if k != "config")
  # a merge into it is refused too, unless it merges the same parts
  config.limit, config.merge = None, (str(tmp_path / "a"),)
  with pytest.raises(FileExistsError, match="merge"):
    experiment.run(config, log=logged.append)


def test_eval_config_problems_named_before_loading(tmp_path):
  """Every bad field at once, one line per field, exit 2, nothing loaded or written."""
  import os
  import subprocess
  import sys
  from c2cjax.config_check import ConfigError
  from c2cjax.evaluation import experiment
  config = eval_config()
  config.benchmarks, config.systems, config.methods = ("nope",), ("c2cx",), ("logits", "x")
  config.limit, config.shard, config.batch_size, config.name = -1, "2/2", 0, " "
  with pytest.raises(ConfigError) as e:
    experiment.check_config(config)
  assert len(e.value.problems) == 7, e.value.problems
  for field in ("benchmarks", "systems", "methods", "shard", "limit=-1", "batch_size=0",
                "name"):
    assert field in str(e.value), field
  root = pathlib.Path(__file__).resolve().parents[1]
  out = subprocess.run(
      [sys.executable, "-m", "c2cjax.eval", f"--config={root / 'configs' / 'eval_local.py'}",
       "--config.benchmarks=nope", f"--config.output_dir={tmp_path}"],
      env=dict(os.environ, PYTHONPATH=str(root)), capture_output=True, text=True, cwd=tmp_path)
  assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
  assert out.stderr.startswith("c2cjax.eval: invalid evaluation config:\n  unknown config."
                               "benchmarks ['nope']"), out.stderr
  assert not any(tmp_path.iterdir())
