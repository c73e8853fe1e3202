"""Training: sharded step equivalence, exact resume after a kill, frozen LLMs."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c2cjax import offline
from c2cjax.c2c import C2C, Fuser
from c2cjax.defaults import train_config
from c2cjax.models.tiny import tiny_lm
from c2cjax.train import TrainState, make_optimizer, make_train_step, train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _needs_offline_tokenizers():
  try:
    offline.smollm2_gguf(), offline.gemma3_gguf()
  except offline.MissingOfflinePackage as e:
    pytest.skip(str(e))


def _config_module(name: str):
  """``configs/<name>.py`` as a module (configs are files, not a package)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"{name}_cfg", ROOT / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def tiny_cfg():
  return _config_module("tiny").get_config()


def test_sharded_step_equals_single_device():
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, str(ROOT / "tests" / "mesh_check.py")], env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and "MESH_OK" in out.stdout, out.stdout + out.stderr[-3000:]


def test_clip_is_torch_rule_and_keeps_optax_state_layout():
  """The step's clip scales by ``min(1, max_norm / (norm + 1e-6))``
  (``torch.nn.utils.clip_grad_norm_``, as the released code trains), leaves gradients under
  the threshold bit for bit, and its state is laid out as ``optax.clip_by_global_norm``'s, so
  an optimizer state saved with that clip restores into this one."""
  import optax
  from c2cjax.train_step import clip_by_global_norm
  g = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([[4.0]])}  # norm 5
  clip = clip_by_global_norm(1.0)
  out, _ = jax.jit(clip.update)(g, clip.init(g))
  np.testing.assert_allclose(out["a"], [3.0 / (5 + 1e-6), 0.0], rtol=1e-7)
  np.testing.assert_allclose(out["b"], [[4.0 / (5 + 1e-6)]], rtol=1e-7)
  small = jax.tree.map(lambda x: x / 10, g)  # norm 0.5: unchanged
  out, _ = clip.update(small, clip.init(small))
  jax.tree.map(np.testing.assert_array_equal, out, small)
  theirs = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)).init(g)
  ours = optax.chain(clip, optax.adamw(1e-3)).init(g)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)


def test_clip_matches_torch_clip_grad_norm():
  """The same clipped gradients as ``torch.nn.utils.clip_grad_norm_`` over several leaves."""
  torch = pytest.importorskip("torch")
  from c2cjax.train_step import clip_by_global_norm
  rng = np.random.default_rng(0)
  grads = [rng.normal(size=s).astype(np.float32) for s in ((7, 5), (11,), (3, 2, 4))]
  for max_norm in (0.5, 1.0, 100.0):
    ts = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads]
    for t, g in zip(ts, grads):
      t.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_norm_(ts, max_norm)
    clip = clip_by_global_norm(max_norm)
    ours, _ = clip.update(grads, clip.init(grads))
    for t, o in zip(ts, ours):
      np.testing.assert_allclose(np.asarray(o), t.grad.numpy(), rtol=1e-6, atol=1e-7)


def test_llm_params_frozen_and_optimizer_holds_only_fuser():
  r, s = tiny_lm("qwen3", seed=0), tiny_lm("llama3", seed=1)
  f = Fuser.init(r, s, jax.random.PRNGKey(0), hidden_dim=32, intermediate_dim=48)
  c2c = C2C(r, [s], [f])
  tx, _ = make_optimizer(train_config(), 10)
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 128, (1, 2, 12)).astype(np.int32)
  batch = {"receiver_ids": ids, "sharer_ids": (ids,), "attention_mask": np.ones_like(ids),
           "fuse_mask": (np.arange(12) < 5).astype(np.int32)[None, None].repeat(2, 1),
           "loss_mask": (np.arange(12) >= 6).astype(np.int32)[None, None].repeat(2, 1)}
  before_r = jax.tree.map(np.array, r.params)
  before_s = jax.tree.map(np.array, s.params)
  state = TrainState(jnp.int32(0), (f.params,), tx.init((f.params,)), jax.random.PRNGKey(1))
  step = jax.jit(make_train_step(c2c, tx))
  for _ in range(2):
    state, m = step(state, r.params, (s.params,), batch)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, r.params), before_r)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, s.params), before_s)
  n_fuser = sum(x.size for x in jax.tree.leaves(state.params))
  n_opt = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim)
  assert n_opt == 2 * n_fuser  # Adam's mu and nu over fuser leaves, nothing else
  llm_shapes = {x.shape for x in jax.tree.leaves((r.params, s.params))}
  fuser_shapes = {x.shape for x in jax.tree.leaves(state.params)}
  assert {x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim} <= fuser_shapes
  assert not any(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params),
                                                       jax.tree.leaves((f.params,)))
                 if a.ndim == 3)  # the fuser did move
  assert llm_shapes  # sanity


def _losses(workdir):
  rows = [json.loads(l) for l in open(workdir / "metrics.jsonl")]
  return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def _wait_until(proc: subprocess.Popen, ready, timeout_s: float = 300) -> None:
  """Polls ``ready()`` while ``proc`` runs (its stderr in the failure, when piped)."""
  deadline = time.time() + timeout_s
  while not ready():
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else "training exited"
    assert time.time() < deadline
    time.sleep(0.05)


@pytest.mark.realweights
def test_kill_and_resume_matches_uninterrupted(tmp_path):
  _needs_offline_tokenizers()
  cfg = tiny_cfg()
  cfg.data.data_dir = str(tmp_path / "tfds")
  full = tmp_path / "full"
  train_and_evaluate(cfg, str(full))
  ref = dict(_losses(full))
  assert sorted(ref) == list(range(1, cfg.max_steps + 1))
  assert (full / "fuser").is_dir() and (full / "final_metrics.json").exists()

  # The same run as a process, killed (SIGKILL) once the step-2 checkpoint is committed.
  killed = tmp_path / "killed"
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.Popen(
      [sys.executable, "-m", "c2cjax.train", "--config", str(ROOT / "configs" / "tiny.py"),
       "--workdir", str(killed), f"--config.data.data_dir={tmp_path / 'tfds'}"],
      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(ROOT))
  _wait_until(proc, lambda: (killed / "checkpoints" / "2").is_dir())
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (killed / "fuser").exists()

  train_and_evaluate(cfg, str(killed))  # resumes from the newest committed checkpoint
  got = _losses(killed)
  assert sorted(s for s, _ in got) == sorted(ref)  # every step once: replays not logged twice
  for s, loss in got:
    assert loss == pytest.approx(ref[s], rel=1e-6, abs=1e-6), (s, loss, ref[s])


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_stop_signal_saves_the_step_reached_and_resumes(tmp_path, sig):
  """Ctrl-C (SIGINT) or a preemption notice (SIGTERM) during training: the step reached is
  saved, one line says so, exit 128 + signal; the same run resumes from that step."""
  _needs_offline_tokenizers()
  work, sig = tmp_path / "w", getattr(signal, sig)
  cfg = tiny_cfg()
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.max_steps, cfg.checkpoint_every = 500, 1000  # no checkpoint but the stop's own
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  proc = subprocess.Popen(
      [sys.executable, "-m", "c2cjax.train", "--config", str(ROOT / "configs" / "tiny.py"),
       "--workdir", str(work), f"--config.data.data_dir={cfg.data.data_dir}",
       "--config.max_steps=500", "--config.checkpoint_every=1000"],
      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
  metrics = work / "metrics.jsonl"
  _wait_until(proc, lambda: metrics.exists() and metrics.read_text())  # a step is logged
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 128 + sig and "Traceback" not in err, err
  last = err.strip().splitlines()[-1]  # after the data's progress bars
  saved = [int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and saved[0] < 500, saved
  assert last == (f"c2cjax.train: {signal.Signals(sig).name} at step {saved[0]}: saved "
                  f"checkpoint {saved[0]}; the same command resumes {work}"), err
  out = train_and_evaluate(cfg, str(work), stop_after=1)  # resumes at the saved step
  assert out == {"stopped_at": saved[0] + 1}
  assert [s for s, _ in _losses(work)] == list(range(1, saved[0] + 2))  # each step once


def test_stop_during_evaluation_cuts_it_short_and_saves(tmp_path, monkeypatch):
  """A stop signal during a held-out evaluation: the evaluation stops (a preemption notice
  gives seconds, an evaluation can take minutes), the step is saved, no eval row logged."""
  _needs_offline_tokenizers()
  from c2cjax import rundir, train as train_lib
  cfg = tiny_cfg()
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.eval_every, cfg.eval_batches, cfg.checkpoint_every = 3, 3, 100  # the signal: batch 1
  stop = rundir.StopSignals()
  real = train_lib.make_eval_step

  def signalled_eval_step(*args, **kwargs):
    step = real(*args, **kwargs)

    def traced(*a):  # runs when the eval step is traced: during the first evaluation
      stop.signum = signal.SIGTERM
      return step(*a)
    return traced

  monkeypatch.setattr(train_lib, "make_eval_step", signalled_eval_step)
  with pytest.raises(rundir.Interrupted, match="SIGTERM at step 3: saved checkpoint 3"):
    train_and_evaluate(cfg, str(tmp_path / "w"), stop=stop)
  assert sorted(int(p.name) for p in (tmp_path / "w" / "checkpoints").iterdir()
                if p.name.isdigit()) == [3]
  rows = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl")]
  assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
  assert not any("eval/c2c_loss" in r for r in rows)


def test_paper_pair_configs():
  pairs = _config_module("pairs")
  base = train_config()
  for name, sharers in pairs.SHARERS.items():
    c = pairs.get_config(name)
    assert tuple(c.sharers) == sharers and c.receiver == base.receiver
    assert c.optimizer.lr == base.optimizer.lr and c.workdir.endswith(name)
    # the paper's recipe: the released C2C's data path and clamped layer map
    assert (c.alignment, c.layer_map) == ("release", "last_aligned_clamped")
  main = _config_module("qwen3").get_config()
  assert (main.alignment, main.layer_map) == ("release", "last_aligned_clamped")
  assert _config_module("local").get_config().alignment == "offsets"
  with pytest.raises(ValueError, match="unknown pair"):
    pairs.get_config("nope")


def test_fuse_response_training_masks_and_loss(tmp_path):
  """``--config.fuse_last/fuse_response`` reach the batches, and the loss reads them."""
  _needs_offline_tokenizers()
  from c2cjax.evaluation.systems import open_gates
  from c2cjax.train import build_c2c, build_data, c2c_nll
  losses, masks = {}, {}
  for flags in ((False, False), (True, True)):
    cfg = tiny_cfg()
    cfg.data.data_dir = str(tmp_path / "tfds")
    cfg.fuse_last, cfg.fuse_response = flags
    c2c = build_c2c(cfg, jax.random.PRNGKey(0))
    ds, _ = build_data(cfg, c2c, 2, heldout=True, seed=0)
    batch = next(iter(ds))
    masks[flags] = batch
    fuser = open_gates(c2c.fusers[0])
    batch = jax.tree.map(jnp.asarray, batch)
    total, count = c2c_nll(c2c, (fuser.params,), c2c.receiver.params,
                           (c2c.sharers[0].params,), batch, train=False)
    losses[flags] = float(total / count)
  plain, full = masks[(False, False)], masks[(True, True)]
  real = plain["attention_mask"].astype(bool)
  assert not (plain["fuse_mask"].astype(bool) & plain["loss_mask"].astype(bool)).any()
  # fuse_last + fuse_response: every real token is fused.
  np.testing.assert_array_equal(full["fuse_mask"].astype(bool), real)
  assert np.isfinite(losses[(True, True)]) and losses[(True, True)] != losses[(False, False)]


def _ragged_batch(rng, b, t, prompt_lens, lengths, vocab=128):
  """Right-padded rows: prompt (fused but its last token) then response (targets)."""
  ids = rng.integers(3, vocab, (b, t)).astype(np.int32)
  pos = np.arange(t)[None]
  p, n = np.asarray(prompt_lens)[:, None], np.asarray(lengths)[:, None]
  real = pos < n
  return {"receiver_ids": np.where(real, ids, 0), "sharer_ids": (np.where(real, ids[:, ::-1], 0),),
          "attention_mask": real.astype(np.int32),
          "fuse_mask": (pos < p - 1).astype(np.int32) * real,
          "loss_mask": ((pos >= p) & real).astype(np.int32)}


def test_prefix_pass2_equals_full_rerun():
  """Pass 2 after the fused prefix (and pass 1 up to the last fused slot) gives the full
  rerun's loss and fuser gradients: eval mode (hard gates forced open) with the whole
  split, train mode (Gumbel gates, dropout) with the pass-2 start only, which keeps the
  random draws' shapes. Ragged rows, padding rows, interleaved fused slots."""
  from c2cjax.train import c2c_nll, pass2_split
  r, s = tiny_lm("qwen3", seed=0), tiny_lm("gemma3", seed=1)
  f = Fuser.init(r, s, jax.random.PRNGKey(3), hidden_dim=32, intermediate_dim=48)
  f = Fuser({**f.params, "key_gate_logit": f.params["key_gate_logit"] + 1.0,
             "value_gate_logit": f.params["value_gate_logit"] + 1.0}, f.config, f.layer_map)
  c2c = C2C(r, [s], [f])
  rng = np.random.default_rng(0)
  batch = _ragged_batch(rng, 4, 32, prompt_lens=[11, 17, 9, 0], lengths=[30, 24, 32, 0])
  split = pass2_split(batch, 8)
  assert split == (8, 16), split  # start <= 9 - 1 (row 2's last prompt token); fused < 16
  assert pass2_split(batch, 0) == (0, 32)
  interleaved = dict(batch, fuse_mask=batch["fuse_mask"] * (np.arange(32) != 2))
  assert pass2_split(interleaved, 8) == (0, 16)  # an unfused slot 2: full pass 2
  assert pass2_split(dict(batch, fuse_mask=batch["fuse_mask"] * (np.arange(32) != 5)),
                     8) == (4, 16)
  # one slot before a multiple of 4, not the fused end: rounded down as before
  assert pass2_split(dict(batch, fuse_mask=batch["fuse_mask"] * (np.arange(32) != 7)),
                     8) == (4, 16)
  # every real row's prompt 16 tokens, all fused: pass 2 from the prompt's last token (15),
  # the slot before the fused end, not 3 slots earlier
  before = _ragged_batch(rng, 4, 32, prompt_lens=[16, 16, 16, 0], lengths=[30, 24, 32, 0])
  before["fuse_mask"] = (np.arange(32) < 16) * before["attention_mask"]
  assert pass2_split(before, 8) == (15, 16)
  assert pass2_split(before, 0) == (0, 32)
  jb = lambda b: jax.tree.map(jnp.asarray, b)

  def loss_grad(b, split, train, params=f.params):
    key = jax.random.PRNGKey(7) if train else None
    fn = lambda p: c2c_nll(c2c, p, r.params, (s.params,), b, train=train, rng=key, split=split)
    (tot, n), g = jax.jit(jax.value_and_grad(fn, has_aux=True))((params,))
    return float(tot / n), g

  cases = [(batch, split, False), (interleaved, pass2_split(interleaved, 8), False),
           (before, (15, 16), False), (batch, (split[0], 32), True)]
  for b, sp, train in cases:
    full, g_full = loss_grad(jb(b), None, train)
    part, g_part = loss_grad(jb(b), sp, train)
    assert part == pytest.approx(full, rel=1e-5), (sp, train)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
                 g_part, g_full)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g_full)) > 0
  # the fused cache matters: a loss with the gates closed differs
  closed = Fuser(f.params | {"key_gate_logit": f.params["key_gate_logit"] - 2.0,
                             "value_gate_logit": f.params["value_gate_logit"] - 2.0},
                 f.config, f.layer_map)
  # (the same program as case 1's: loaded from the run's compilation cache, not run op by op)
  assert (loss_grad(jb(batch), split, False, closed.params)[0]
          != pytest.approx(loss_grad(jb(batch), split, False)[0], rel=1e-5))
