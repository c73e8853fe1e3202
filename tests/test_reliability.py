"""Bad inputs and faults: each names the problem, loses nothing and exits with the right code.

Config validation, unknown ``--config.x``, run manifests and resumes, the finite-loss guard,
finished runs, metrics logs after a resume, checkpoint I/O failures, model files (tokenizer,
GGUF, safetensors, JSON) and atomic reports. CLI tests run a subprocess only where the exit
code matters.
"""

import errno
import json
import os
import pathlib
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from c2cjax import config_check, files, offline, rundir
from c2cjax.defaults import train_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.py"


def tiny_cfg():
  import importlib.util
  spec = importlib.util.spec_from_file_location("tiny_cfg", TINY)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def needs_offline():
  try:
    offline.smollm2_gguf(), offline.gemma3_gguf()
  except offline.MissingOfflinePackage as e:
    pytest.skip(str(e))


def cli(*args, timeout=600):
  """``python -m c2cjax.train`` on configs/tiny.py: (exit code, stdout, stderr)."""
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, "-m", "c2cjax.train", "--config", str(TINY), *args],
                       env=env, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))
  return out.returncode, out.stdout, out.stderr


def strict_json(text: str):
  """json.loads that rejects NaN/Infinity, as strict readers do."""
  def reject(token):
    raise ValueError(f"non-standard JSON token {token}")
  return json.loads(text, parse_constant=reject)


def problems(cfg) -> list[str]:
  with pytest.raises(config_check.ConfigError) as e:
    config_check.validate_train_config(cfg)
  return e.value.problems


# --- config validation (no model loads) -----------------------------------------------------
@pytest.mark.parametrize("field,value,expect", [
    ("optimizer.lr", -1e-4, "optimizer.lr=-0.0001: must be a finite number > 0"),
    ("optimizer.lr", float("nan"), "optimizer.lr=nan: must be a finite number"),
    ("optimizer.warmup_fraction", 1.5, "optimizer.warmup_fraction=1.5: must be a finite "
                                       "number in [0.0, 1.0]"),
    ("optimizer.warmup_fraction", -0.1, "optimizer.warmup_fraction=-0.1"),
    ("per_device_batch_size", 0, "per_device_batch_size=0: must be an integer >= 1"),
    ("checkpoint_every", 0, "checkpoint_every=0: must be an integer >= 1"),
    ("llm_dtype", "float16", "llm_dtype='float16': must be one of 'auto', 'float32', 'bfloat16'"),
    ("remat", "fast", "remat='fast': must be one of 'none', "),
    ("max_steps", 0, "max_steps=0: must be a positive step count, or -1"),
    ("fuser.num_layers", 2, "fuser.num_layers=2: must be an integer >= 3"),
    ("data.heldout_fraction", 1.0, "data.heldout_fraction=1.0"),
    ("fusion_mode", "serial", "fusion_mode='serial': must be one of 'parallel', 'sequential'"),
    ("alignment", "best", "alignment='best': must be one of"),
    ("global_batch_size", 5, "global_batch_size=5: must be a multiple of "
                             "per_device_batch_size=2"),
    ("log_every", -3, "log_every=-3"),
    ("pass2_parts", -1, "pass2_parts=-1: must be an integer >= 0"),
])
def test_bad_config_field_is_named(field, value, expect):
  cfg = tiny_cfg()
  node, leaf = cfg, field
  if "." in field:
    group, leaf = field.split(".")
    node = cfg[group]
  node[leaf] = value
  got = problems(cfg)
  assert len(got) == 1 and got[0].startswith(expect), got


def test_num_epochs_zero_says_no_step():
  cfg = tiny_cfg()
  cfg.max_steps, cfg.num_epochs = -1, 0
  assert problems(cfg) == ["num_epochs=0: must be >= 1 when max_steps=-1 (with num_epochs=0 "
                           "the run would have no training step)"]


def test_missing_max_steps_is_named_missing():
  cfg = tiny_cfg()
  del cfg["max_steps"]
  assert problems(cfg) == ["max_steps: missing"]


def test_every_bad_field_reported_at_once():
  cfg = tiny_cfg()
  cfg.optimizer.lr, cfg.optimizer.warmup_fraction = -1.0, 2.0
  cfg.per_device_batch_size, cfg.checkpoint_every, cfg.llm_dtype = 0, 0, "float16"
  cfg.sharers, cfg.mesh.fsdp = (), -1
  got = problems(cfg)
  for name in ("optimizer.lr", "optimizer.warmup_fraction", "per_device_batch_size",
               "checkpoint_every", "llm_dtype", "sharers", "mesh="):
    assert sum(p.startswith(name) for p in got) == 1, (name, got)


def test_shipped_train_configs_are_valid():
  for name in ("tiny", "local", "qwen3", "pairs", "transfer"):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config_check.validate_train_config(mod.get_config())
  config_check.validate_train_config(train_config())


def test_unknown_field_message_lists_near_matches():
  cfg = tiny_cfg()
  assert "did you mean optimizer.lr" in config_check.unknown_field_message(cfg, "optimizer.lrr")
  assert "did you mean optimizer.lr" in config_check.unknown_field_message(cfg, "lr")
  assert "checkpoint_every" in config_check.unknown_field_message(cfg, "checkpoint_evry")
  assert "no similar field" in config_check.unknown_field_message(cfg, "zzzz")


def test_cli_bad_flags_are_one_line_exit_2(tmp_path):
  """Unknown fields, bad values, invalid fields, missing config files: one line, exit 2,
  nothing created."""
  work = tmp_path / "w"
  code, _, err = cli("--workdir", str(work), "--config.optimizer.lrr=1", "--config.bogus=2")
  assert code == 2 and "Traceback" not in err, err
  assert err.strip().splitlines() == [
      "c2cjax.train: unknown config field 'optimizer.lrr' (did you mean optimizer.lr, "
      "optimizer.b2, optimizer.b1?); unknown config field 'bogus' (no similar field)"]
  code, _, err = cli("--workdir", str(work), "--config.optimizer.lr=abc")
  assert code == 2 and len(err.strip().splitlines()) == 1 and "lr=abc" in err, err
  code, _, err = cli("--workdir", str(work), "--config.checkpoint_every=0",
                     "--config.llm_dtype=float16")
  assert code == 2 and "Traceback" not in err, err
  assert "checkpoint_every=0" in err and "llm_dtype='float16'" in err
  assert not work.exists()  # validated before anything is created or loaded
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, "-m", "c2cjax.train", "--config", "nope.py"],
                       env=env, capture_output=True, text=True, cwd=str(tmp_path))
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert "nope.py" in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_cli_checkpoint_path_not_a_directory_exit_1(tmp_path):
  (tmp_path / "checkpoints").write_text("in the way")
  code, _, err = cli("--workdir", str(tmp_path))
  assert code == 1 and "Traceback" not in err, err
  assert f"{tmp_path / 'checkpoints'} is not a directory" in err
  assert (tmp_path / "checkpoints").read_text() == "in the way"
  work = tmp_path / "file"
  work.write_text("x")
  with pytest.raises(rundir.RunDirError, match=f"{work} is not a directory"):
    rundir.prepare(work)


# --- manifest, resume, finished runs -----------------------------------------------------------
@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
  """A tiny run stopped after 3 steps: checkpoint 2, metrics rows 1..3 (3 replayed later)."""
  needs_offline()
  from c2cjax.train import train_and_evaluate
  base = tmp_path_factory.mktemp("interrupted")
  cfg = tiny_cfg()
  cfg.data.data_dir = str(base / "tfds")
  out = train_and_evaluate(cfg, str(base / "run"), stop_after=3)
  assert out == {"stopped_at": 3}
  return cfg, base / "run"


def _copy(run: pathlib.Path, tmp_path) -> pathlib.Path:
  dst = tmp_path / "run"
  shutil.copytree(run, dst)
  return dst


def _snapshot(run: pathlib.Path) -> dict:
  return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
          if p.is_file()}


def test_manifest_records_config_models_version(interrupted):
  cfg, run = interrupted
  m = strict_json((run / "manifest.json").read_text())
  assert m["config"]["optimizer"]["lr"] == cfg.optimizer.lr
  assert m["config"]["sharers"] == list(cfg.sharers)
  r = m["models"]["receiver"]
  assert r["name"] == cfg.receiver and r["arch"] == "qwen3" and r["num_layers"] == 3
  assert len(r["fingerprint"]) == 16 and len(m["models"]["sharers"]) == 1
  assert m["models"]["sharers"][0]["arch"] == "gemma3"
  import c2cjax
  assert m["c2cjax_version"] == c2cjax.__version__


def test_resume_with_changed_config_lists_fields(interrupted, tmp_path):
  from c2cjax.train import train_and_evaluate
  cfg, run = interrupted
  run = _copy(run, tmp_path)
  before = _snapshot(run)
  changed = tiny_cfg()
  changed.data.data_dir = cfg.data.data_dir
  changed.seed, changed.optimizer.lr, changed.max_steps = 7, 3e-4, 8
  with pytest.raises(rundir.RunDirError) as e:
    train_and_evaluate(changed, str(run))
  msg = str(e.value)
  assert "optimizer.lr: 0.0001 in the run, 0.0003 now" in msg
  assert "seed: 0 in the run, 7 now" in msg
  assert "max_steps: 6 in the run, 8 now  (allowed with --allow_config_change)" in msg
  # The flag admits max_steps but not seed or lr.
  with pytest.raises(rundir.RunDirError) as e:
    train_and_evaluate(changed, str(run), allow_config_change=True)
  assert "seed: 0 in the run" in str(e.value) and "max_steps: 6" not in str(e.value)
  assert _snapshot(run) == before  # nothing touched


def test_resume_with_other_model_weights_is_refused(interrupted, tmp_path):
  from c2cjax.train import train_and_evaluate
  cfg, run = interrupted
  run = _copy(run, tmp_path)
  m = json.loads((run / "manifest.json").read_text())
  m["models"]["receiver"]["fingerprint"] = "0123456789abcdef"
  (run / "manifest.json").write_text(json.dumps(m))
  with pytest.raises(rundir.RunDirError, match="receiver fingerprint: '0123456789abcdef' in "
                                               "the run, '[0-9a-f]{16}' now"):
    train_and_evaluate(cfg, str(run))
  assert rundir.committed_steps(run / "checkpoints") == [2]


def test_corrupt_manifest_names_the_file(interrupted, tmp_path):
  from c2cjax.train import train_and_evaluate
  cfg, run = interrupted
  run = _copy(run, tmp_path)
  (run / "manifest.json").write_text('{"config": {')
  with pytest.raises(files.CorruptFileError, match=f"run manifest {run / 'manifest.json'} is "
                                                   "not valid JSON"):
    train_and_evaluate(cfg, str(run))


def _tb_scalars(tb: pathlib.Path) -> list[tuple[str, int]]:
  """(tag, step) of every scalar TensorBoard shows: events read in file order, earlier
  events at or after a ``SessionLog.START`` step purged (TensorBoard's rule)."""
  from tensorboardX.proto import event_pb2
  shown = []
  for f in sorted(tb.glob("events.out.tfevents.*")):
    data = f.read_bytes()
    pos = 0
    while pos < len(data):
      (n,) = struct.unpack("<Q", data[pos:pos + 8])
      ev = event_pb2.Event.FromString(data[pos + 12:pos + 12 + n])
      pos += 12 + n + 4
      if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
        shown = [(t, s) for t, s in shown if s < ev.step]
      for v in ev.summary.value:
        shown.append((v.tag, ev.step))
  return shown


def test_resume_logs_each_step_once_then_rerun_is_noop(interrupted, tmp_path):
  from c2cjax.train import train_and_evaluate
  cfg, run = interrupted
  run = _copy(run, tmp_path)
  rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]  # 3 is past checkpoint 2
  final = train_and_evaluate(cfg, str(run))
  rows = [strict_json(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in rows if "train/loss" in r]
  eval_steps = [r["step"] for r in rows if "eval/c2c_loss" in r]
  assert train_steps == [1, 2, 3, 4, 5, 6] and eval_steps == [3, 6]
  scalars = _tb_scalars(run / "tb")
  assert len(scalars) == len(set(scalars))
  assert sorted(s for t, s in scalars if t == "train/loss") == [1, 2, 3, 4, 5, 6]
  m = strict_json((run / "manifest.json").read_text())
  assert [r["step"] for r in m["resumes"]] == [2]
  saved = strict_json((run / "final_metrics.json").read_text())
  assert saved["step"] == 6 and saved["train/loss"] == final["train/loss"]
  # A finished run re-run: a no-op that keeps every file.
  before = _snapshot(run)
  again = train_and_evaluate(cfg, str(run))
  assert again == saved and _snapshot(run) == before


def test_cli_finished_run_says_so(interrupted, tmp_path):
  cfg, run = interrupted
  run = _copy(run, tmp_path)
  (run / "final_metrics.json").write_text('{"step": 6, "train/loss": 1.5}')
  before = _snapshot(run)
  code, out, err = cli("--workdir", str(run), f"--config.data.data_dir={cfg.data.data_dir}")
  assert code == 0 and "already finished at step 6; nothing to do" in err, err
  assert json.loads(out) == {"step": 6, "train/loss": 1.5}
  assert _snapshot(run) == before


def test_checkpoint_disk_full_is_one_error_keeping_last_good(interrupted, tmp_path,
                                                             monkeypatch):
  import orbax.checkpoint as ocp
  from c2cjax.train import train_and_evaluate
  cfg, run = interrupted
  run = _copy(run, tmp_path)
  real_save = ocp.CheckpointManager.save

  def full_disk(self, step, *a, **k):
    if step >= 4:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_save(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "save", full_disk)
  with pytest.raises(rundir.CheckpointIOError) as e:
    train_and_evaluate(cfg, str(run))
  msg = str(e.value)
  assert msg == (f"saving checkpoint step 4 under {run / 'checkpoints'} failed (OSError: No "
                 "space left on device); the last good checkpoint, step 2, is intact"), msg
  assert rundir.committed_steps(run / "checkpoints") == [2]
  assert not (run / "final_metrics.json").exists() and not (run / "fuser").exists()
  monkeypatch.undo()
  with ocp.CheckpointManager(run / "checkpoints") as mngr:  # step 2 still restores
    restored = mngr.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  import jax
  leaves = jax.tree.leaves(restored.state)
  assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)


def test_export_failure_keeps_checkpoint_and_rerun_exports(interrupted, tmp_path,
                                                            monkeypatch):
  from c2cjax import train
  cfg, run = interrupted
  run = _copy(run, tmp_path)

  def full_disk(*a, **k):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(train.fuse_lib, "save", full_disk)
  with pytest.raises(rundir.CheckpointIOError, match=(
      f"exporting the fuser and final metrics under {run} failed \\(OSError: No space left "
      "on device\\); the last good checkpoint, step 6, is intact")):
    train.train_and_evaluate(cfg, str(run))
  assert not (run / "final_metrics.json").exists()
  monkeypatch.undo()
  final = train.train_and_evaluate(cfg, str(run))  # no step left: exports only
  assert (run / "fuser").is_dir()
  saved = strict_json((run / "final_metrics.json").read_text())
  assert saved == final and saved["step"] == 6 and saved["train/loss"] is not None
  assert saved["eval/c2c_loss"] is not None  # recovered from metrics.jsonl


# --- the finite-loss guard --------------------------------------------------------------------------
def test_nan_loss_stops_run_keeps_last_good_checkpoint(tmp_path):
  """The issue's reproduction: lr=1e30 on configs/tiny.py."""
  needs_offline()
  run = tmp_path / "run"
  code, _, err = cli("--workdir", str(run), f"--config.data.data_dir={tmp_path / 'tfds'}",
                     "--config.optimizer.lr=1e30")
  assert code == 1, err[-3000:]
  line = [l for l in err.splitlines() if l.startswith("c2cjax.train: error:")]
  assert len(line) == 1 and "step 3: non-finite training state" in line[0], err[-3000:]
  assert f"the last good checkpoint is step 2 in {run / 'checkpoints'}" in line[0]
  assert rundir.committed_steps(run / "checkpoints") == [2]  # nothing after the bad step
  assert not (run / "fuser").exists() and not (run / "final_metrics.json").exists()
  rows = [strict_json(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 3 and rows[-1]["train/loss"] is None
  import jax
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(run / "checkpoints") as mngr:
    restored = mngr.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  leaves = jax.tree.leaves(restored.state)
  assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)


def test_train_step_flags_non_finite():
  import jax
  import jax.numpy as jnp
  from c2cjax.c2c import C2C, Fuser
  from c2cjax.models.tiny import tiny_lm
  from c2cjax.train import TrainState, make_optimizer, make_train_step
  r, s = tiny_lm("qwen3", seed=0), tiny_lm("llama3", seed=1)
  f = Fuser.init(r, s, jax.random.PRNGKey(0), hidden_dim=32, intermediate_dim=48)
  tx, _ = make_optimizer(train_config(), 10)
  ids = np.random.default_rng(0).integers(3, 128, (1, 2, 12)).astype(np.int32)
  batch = {"receiver_ids": ids, "sharer_ids": (ids,), "attention_mask": np.ones_like(ids),
           "fuse_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}
  step = jax.jit(make_train_step(C2C(r, [s], [f]), tx))
  state = TrainState(jnp.int32(0), (f.params,), tx.init((f.params,)), jax.random.PRNGKey(1))
  _, m = step(state, r.params, (s.params,), batch)
  assert bool(m["finite"])
  bad = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), f.params)
  state = TrainState(jnp.int32(0), (bad,), tx.init((bad,)), jax.random.PRNGKey(1))
  _, m = step(state, r.params, (s.params,), batch)
  assert not bool(m["finite"])


def test_all_finite_finds_one_bad_element_anywhere():
  """The training step's guard over the new params: one NaN, inf or -inf anywhere in a
  large or a small leaf is found (XLA:CPU's max reduction dropped a NaN, so the guard must
  not rest on one), and a huge finite value is no false alarm."""
  import jax
  import jax.numpy as jnp
  from c2cjax.train_step import all_finite
  check = jax.jit(all_finite)
  big, small = jnp.ones((6, 512, 1024)), jnp.ones((3,), jnp.bfloat16)
  assert bool(check({"a": big, "b": small}))
  for v in (jnp.nan, jnp.inf, -jnp.inf):
    for pos in ((0, 0, 0), (5, 511, 1023), (2, 300, 7)):
      assert not bool(check({"a": big.at[pos].set(v), "b": small})), (v, pos)
    assert not bool(check({"a": big, "b": small.at[1].set(v)})), v
  assert bool(check({"a": big.at[1, 2, 3].set(3e38), "b": small.at[0].set(3e38)}))


def test_metrics_log_is_strict_json(tmp_path):
  log = rundir.MetricsLog(tmp_path, 0, tensorboard=False)
  log.log(1, {"train/loss": float("nan"), "train/grad_norm": float("inf"), "x": np.float32(2)})
  log.close()
  assert strict_json((tmp_path / "metrics.jsonl").read_text()) == {
      "step": 1, "train/loss": None, "train/grad_norm": None, "x": 2.0}
  assert files.dumps_strict({"a": [float("-inf"), 1.0]}) == '{"a": [null, 1.0]}'


# --- model files ------------------------------------------------------------------------------
@pytest.fixture
def hf_dir(tmp_path):
  from tests import hf_tiny
  d = tmp_path / "qwen3"
  hf_tiny.build("qwen3", d)
  return d


def test_model_dir_without_tokenizer_is_clear_error(hf_dir):
  from c2cjax import load_model
  with pytest.raises(FileNotFoundError, match=f"no tokenizer files in {hf_dir}.*tokenizer=False"):
    load_model(hf_dir, use_cache=False)
  assert load_model(hf_dir, tokenizer=False, use_cache=False).tokenizer is None


def test_corrupt_config_json_names_file(hf_dir):
  from c2cjax import load_model
  (hf_dir / "config.json").write_text('{"model_type": "qwen3", ')
  with pytest.raises(OSError, match=f"{hf_dir / 'config.json'}.*not a valid JSON"):
    load_model(hf_dir, tokenizer=False, use_cache=False)


def test_truncated_safetensors_names_file(hf_dir):
  from c2cjax import load_model
  f = hf_dir / "model.safetensors"
  f.write_bytes(f.read_bytes()[:5000])
  with pytest.raises(files.CorruptFileError, match=f"safetensors file {f} cannot be read"):
    load_model(hf_dir, tokenizer=False, use_cache=False)


def test_damaged_params_cache_is_rebuilt(hf_dir, tmp_path, monkeypatch, caplog):
  import jax
  from c2cjax import load_model
  monkeypatch.setenv("C2CJAX_CACHE", str(tmp_path / "cache"))
  first = load_model(hf_dir, tokenizer=False)
  (meta,) = (tmp_path / "cache" / "params").glob("*.json")
  meta.write_text('{"model_type": ')  # e.g. a write cut short
  again = load_model(hf_dir, tokenizer=False)
  assert "ignoring the damaged converted-params cache" in caplog.text
  jax.tree.map(np.testing.assert_array_equal, first.params, again.params)
  strict_json(meta.read_text())  # rewritten whole


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_bad_gguf_names_file(kind, tmp_path):
  from c2cjax import load_model
  path = tmp_path / f"{kind}.gguf"
  if kind == "truncated":
    try:
      src = offline.smollm2_gguf()
    except offline.MissingOfflinePackage as e:
      pytest.skip(str(e))
    with open(src, "rb") as f:
      path.write_bytes(f.read(2_000_000))
    expect = "is truncated or corrupt"
  else:
    path.write_bytes(b"hello world" * 10 if kind == "garbage" else b"")
    expect = "is not a GGUF file"
  with pytest.raises(files.CorruptFileError, match=f"GGUF file {path} {expect}"):
    load_model(path, use_cache=False)


# --- reports --------------------------------------------------------------------------------
def _records():
  from c2cjax.evaluation import report
  return [report.Record("receiver", "mmlu", "s", "c", i % 2 == 0, True, 0.1, 3, f"q{i}")
          for i in range(4)]


def test_report_write_is_atomic(tmp_path, monkeypatch):
  from c2cjax.evaluation import report
  paths = report.write_report(_records(), tmp_path)
  before = {k: p.read_bytes() for k, p in paths.items()}

  def crash(summary, path):
    pathlib.Path(path).write_bytes(b"half a png")
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(report, "plot_accuracy", crash)
  with pytest.raises(OSError):
    report.write_report(_records()[:2], tmp_path)
  assert paths["chart"].read_bytes() == before["chart"]  # the old chart, not half a new one
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_records_roundtrip_and_corrupt_line_named(tmp_path):
  from c2cjax.evaluation import report
  path = tmp_path / "r.jsonl"
  report.save_records(_records(), path)
  assert report.load_records(path) == _records()
  path.write_text(path.read_text() + '{"system": "c2c", "bench\n')
  with pytest.raises(files.CorruptFileError, match=f"{path}, line 5: not a record"):
    report.load_records(path)


def test_read_json_names_missing_and_corrupt_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"fuser metadata not found: {tmp_path / 'x'}"):
    files.read_json(tmp_path / "x", "fuser metadata")
  (tmp_path / "y").write_bytes(b"\xff\xfe{")
  with pytest.raises(files.CorruptFileError, match=f"{tmp_path / 'y'} is not UTF-8"):
    files.read_json(tmp_path / "y")
  files.atomic_write_text(tmp_path / "z", "[1, 2")
  with pytest.raises(files.CorruptFileError, match=f"{tmp_path / 'z'} is not valid JSON"):
    files.read_json(tmp_path / "z")


def test_fields_added_later_do_not_block_resuming_older_runs():
  from c2cjax import config_check
  old = {"fuser": {"hidden_dim": 8}, "data": {"max_len": 4}}
  new = {"fuser": {"hidden_dim": 8, "gate_init": 0.0}, "data": {"max_len": 4, "reply_prefix": ""}}
  assert config_check.differences(old, new) == {}
  new["fuser"]["gate_init"] = 4.0
  assert config_check.differences(old, new) == {"fuser.gate_init": (0.0, 4.0)}
