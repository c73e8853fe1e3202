"""Bad inputs after the restructure: evaluation merges and C-Eval, generation inputs
(``c2cjax.inputs`` in ``LM`` / ``C2C``), fuser checkpoints and their models."""

import json
import pathlib

import numpy as np
import pytest

from c2cjax import files, inputs
from c2cjax.defaults import eval_config


# --- evaluation --------------------------------------------------------------------------------
def _part(path: pathlib.Path, shard: str, records) -> pathlib.Path:
  from c2cjax.evaluation import report
  path.mkdir(parents=True)
  config = eval_config()
  config.shard = shard
  (path / "config.json").write_text(config.to_json_best_effort(indent=2))
  (path / "predictions.jsonl").write_text("")
  report.save_records(records, path / "logits_records.jsonl")
  return path


def _records(ids):
  from c2cjax.evaluation import report
  return [report.Record("receiver", "arc", "s", "c", True, True, 0.1, 1, f"q{i}") for i in ids]


def test_merge_output_must_not_be_a_part(tmp_path):
  from c2cjax.evaluation.merge import merge
  a = _part(tmp_path / "a", "0/2", _records([0, 1]))
  b = _part(tmp_path / "b", "1/2", _records([2, 3]))
  before = (a / "logits_records.jsonl").read_bytes()
  with pytest.raises(ValueError, match=f"the merge output {a} is one of its parts"):
    merge([a, b], a)
  with pytest.raises(ValueError, match="is one of its parts"):
    merge([a, b], tmp_path / "b" / ".." / "b")
  assert (a / "logits_records.jsonl").read_bytes() == before
  paths = merge([a, b], tmp_path / "merged")
  assert json.loads(paths["logits.json"].read_text())["results"]["arc"]["receiver"][
      "overall"]["n"] == 4


def test_merge_corrupt_part_config_names_file(tmp_path):
  from c2cjax.evaluation.merge import merge
  a = _part(tmp_path / "a", "0/1", _records([0]))
  (a / "config.json").write_text('{"name": ')
  with pytest.raises(files.CorruptFileError, match=f"evaluation config {a / 'config.json'} "
                                                   "is not valid JSON"):
    merge([a], tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_missing_ceval_path_is_an_error(tmp_path):
  from c2cjax.evaluation.experiment import load_questions
  config = eval_config()
  config.benchmarks = ("ceval",)
  config.ceval_path = str(tmp_path / "no_such_dir")
  logged = []
  with pytest.raises(FileNotFoundError, match="C-Eval is in benchmarks but cannot be read "
                                              f"from --config.ceval_path={tmp_path}"):
    load_questions(config, logged.append)
  assert not any("skipped" in line for line in logged)


# --- generation inputs (pure checks) -------------------------------------------------------------
@pytest.mark.parametrize("prompts,err,match", [
    ([], ValueError, "no prompts"),
    ("hello", TypeError, "wrap a single prompt in a list"),
    ([[]], ValueError, "prompt 0 is empty"),
    (["ok", None], TypeError, "prompt 1 must be a string, a list of chat messages or a list "
                              "of token ids, got NoneType"),
    (["ok", [1, "a"]], TypeError, "prompt 1 must be"),
    ([[{"role": "user"}]], ValueError, "prompt 0: chat message 0 needs 'role' and 'content'"),
    ([[1.5, 2]], TypeError, "prompt 0 must be"),
])
def test_bad_prompts_are_named(prompts, err, match):
  with pytest.raises(err, match=match):
    inputs.check_prompts(prompts)


def test_good_prompts_pass():
  assert len(inputs.check_prompts(["a", [1, 2], np.array([3]),
                                   [{"role": "user", "content": "x"}]])) == 4


def test_ids_outside_vocabulary_are_named():
  inputs.check_ids([[0, 5, 9]], 10)
  with pytest.raises(ValueError, match="prompt 1 has token id 10 outside the receiver's "
                                       r"vocabulary \[0, 10\)"):
    inputs.check_ids([[1], [3, 10]], 10, "the receiver")
  with pytest.raises(ValueError, match="token id -1"):
    inputs.check_ids([[-1]], 10)


def test_positions_beyond_the_model_are_an_error():
  inputs.check_positions(200, 56, 256)
  with pytest.raises(ValueError, match=r"prompt of 200 tokens \+ 57 new tokens = 257 "
                                       r"positions, more than the model's "
                                       r"max_position_embeddings \(256\)"):
    inputs.check_positions(200, 57, 256)
  with pytest.raises(ValueError, match="max_new_tokens must be >= 0"):
    inputs.check_positions(1, -1, 256)


def test_unencodable_text_is_named(real):
  smol, _ = real
  with pytest.raises(ValueError, match="prompt 2 cannot be encoded by the tokenizer"):
    inputs.encode_text(smol, "\ud800", 2)
  with pytest.raises(ValueError, match="prompt 0 encodes to no tokens"):
    inputs.encode_text(smol, "", 0)
  with pytest.raises(ValueError, match="prompt 0 is text but the model has no tokenizer"):
    inputs.encode_text(None, "hi", 0)
  assert inputs.encode_text(smol, "hi", 0)


# --- generation inputs in LM and C2C -----------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_pair():
  import jax
  from c2cjax.c2c import C2C
  from c2cjax.fuse import Fuser
  from c2cjax.models.tiny import tiny_lm
  r, s = tiny_lm("qwen3", seed=0), tiny_lm("llama3", seed=1)
  f = Fuser.init(r, s, jax.random.PRNGKey(0), hidden_dim=32, intermediate_dim=48)
  return r, s, C2C(r, [s], [f])


def _batch(n, width, value=5):
  return np.full((n, width), value, np.int32), np.ones((n, width), np.int32)


def test_lm_rejects_bad_generation_inputs(tiny_pair):
  r, _, _ = tiny_pair
  with pytest.raises(ValueError, match="no prompts"):
    r.generate([], max_new_tokens=2)
  tokens, mask = _batch(1, 4)
  tokens[0, 2] = 128  # vocab is 128
  with pytest.raises(ValueError, match=r"prompt 0 has token id 128 outside the model's "
                                       r"vocabulary \[0, 128\)"):
    r.generate_ids(tokens, mask, max_new_tokens=2)
  with pytest.raises(ValueError, match=r"prompt 0 is text but the model has no tokenizer"):
    r.generate(["hello"], max_new_tokens=2)
  tokens, mask = _batch(1, 250)
  with pytest.raises(ValueError, match=r"250 tokens \+ 7 new tokens = 257 positions, more "
                                       r"than the model's max_position_embeddings \(256\)"):
    r.generate_ids(tokens, mask, max_new_tokens=7)
  out, lengths, _ = r.generate_ids(*_batch(1, 4), max_new_tokens=2)  # a good batch runs
  assert out.shape == (1, 2)


def test_c2c_rejects_bad_generation_inputs(tiny_pair):
  _, _, c2c = tiny_pair
  tokens, mask = _batch(1, 6)
  bad_sharer = tokens.copy()
  bad_sharer[0, 1] = 500
  with pytest.raises(ValueError, match=r"prompt 0 has token id 500 outside sharer 0's "
                                       r"vocabulary \[0, 128\)"):
    c2c.generate_ids(tokens, mask, (bad_sharer,), max_new_tokens=2)
  with pytest.raises(ValueError, match="outside the receiver's vocabulary"):
    c2c.generate_ids(tokens * 100, mask, (tokens,), max_new_tokens=2)
  with pytest.raises(ValueError, match="more than the receiver's max_position_embeddings"):
    c2c.generate_ids(*_batch(1, 250), (_batch(1, 250)[0],), max_new_tokens=10)
  with pytest.raises(ValueError, match=r"must be \[B, P\] with B >= 1"):
    c2c.generate_ids(np.zeros((0, 6), np.int32), np.zeros((0, 6), np.int32),
                     (np.zeros((0, 6), np.int32),), max_new_tokens=2)


# --- fuser checkpoints ---------------------------------------------------------------------------
def _saved_fuser(path, tiny_pair, models=None):
  from c2cjax import fuse
  r, s, c2c = tiny_pair
  f = c2c.fusers[0]
  fuse.save(path, (f.params,), (f.config,), (f.layer_map,),
            {"models": models} if models else None)
  return path


def test_fuser_load_on_a_run_directory_names_the_fuser(tmp_path, tiny_pair):
  from c2cjax.fuse import Fuser
  _saved_fuser(tmp_path / "run" / "fuser", tiny_pair)
  (tmp_path / "run" / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'run'} is a training run "
                                              f"directory; the fuser is at "
                                              f"{tmp_path / 'run' / 'fuser'}"):
    Fuser.load(tmp_path / "run")
  assert Fuser.load(tmp_path / "run" / "fuser").layer_map == tiny_pair[2].fusers[0].layer_map
  with pytest.raises(FileNotFoundError, match=f"fuser checkpoint not found: {tmp_path / 'x'}"):
    Fuser.load(tmp_path / "x")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="is not a fuser checkpoint"):
    Fuser.load(tmp_path / "empty")
  (tmp_path / "file").write_text("not a fuser")
  with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'file'} is a file; a fuser "
                                              "checkpoint is a directory"):
    Fuser.load(tmp_path / "file")


def test_demo_bad_fuser_is_one_line_before_models_load(tmp_path):
  """``c2cjax.demo --fuser`` that is missing or not a checkpoint: one line, exit 2, before any
  model loads (the models named here do not exist, so loading them would fail otherwise)."""
  import os
  import subprocess
  import sys
  (tmp_path / "dir").mkdir()
  (tmp_path / "file").write_text("x")
  root = pathlib.Path(__file__).resolve().parents[1]
  env = dict(os.environ, PYTHONPATH=str(root))
  for fuser, expect in (("nope", "fuser checkpoint not found"),
                        ("dir", "is not a fuser checkpoint"), ("file", "is a file")):
    out = subprocess.run([sys.executable, "-m", "c2cjax.demo", "--fuser", str(tmp_path / fuser),
                          "--receiver", str(tmp_path / "no_model"), "--sharer",
                          str(tmp_path / "no_model")],
                         env=env, capture_output=True, text=True, cwd=str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("c2cjax.demo: --fuser: "), out.stderr
    assert expect in lines[0], out.stderr
  out = subprocess.run([sys.executable, "-m", "c2cjax.demo", "--max_new_tokens=0"], env=env,
                       capture_output=True, text=True, cwd=str(tmp_path))
  assert out.returncode == 2 and out.stderr.strip() == (
      "c2cjax.demo: flag --max_new_tokens=0: 0 is not a positive integer"), out.stderr


def test_corrupt_fuser_metadata_names_file(tmp_path, tiny_pair):
  from c2cjax.fuse import Fuser
  path = _saved_fuser(tmp_path / "f", tiny_pair)
  meta = path / "fuser" / "metadata"
  meta.write_text(meta.read_text()[:20])
  with pytest.raises(files.CorruptFileError, match=f"fuser metadata {meta} is not valid JSON"):
    Fuser.load(path)


def test_corrupt_projector_config_names_file(tmp_path):
  from c2cjax import fuse
  (tmp_path / "projector_config.json").write_text('{"0": {"1": ')
  with pytest.raises(files.CorruptFileError, match=f"{tmp_path / 'projector_config.json'} "
                                                   "is not valid JSON"):
    fuse.import_rosetta(tmp_path)


def test_fuser_models_mismatch_names_both(tiny_pair):
  from c2cjax.fuse import io
  from c2cjax.models.identity import identity
  from c2cjax.models.tiny import tiny_lm
  r, s, _ = tiny_pair
  meta = {"models": {"receiver": identity(r, fingerprint=False),
                     "sharers": [identity(s, fingerprint=False)]}}
  io.check_models(meta, r, [s])  # the models it was trained for
  io.check_models({}, r, [s])  # older checkpoints carry no record
  deeper = tiny_lm("qwen3", seed=0, num_hidden_layers=6)
  with pytest.raises(ValueError) as e:
    io.check_models(meta, deeper, [s])
  msg = str(e.value)
  assert "receiver: trained for qwen3 'tiny:qwen3' (3 layers" in msg
  assert "given qwen3 'tiny:qwen3' (6 layers" in msg and "num_layers: 3 != 6" in msg
  assert "allow_mismatch=True" in msg
  with pytest.raises(ValueError, match="sharer 0: trained for llama 'tiny:llama3'.*given "
                                       "qwen3.*arch: 'llama' != 'qwen3'"):
    io.check_models(meta, r, [r])
  with pytest.warns(UserWarning, match="trained for other models"):
    io.check_models(meta, deeper, [s], allow_mismatch=True)
