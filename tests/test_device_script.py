"""``benchmarks/device.sh --dry``: the accelerator benchmark runs end to end on CPU."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_device_script_dry_run(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  out = subprocess.run([str(ROOT / "benchmarks" / "device.sh"), "--dry", "--out", str(tmp_path),
                        "--pairs-at-once", "2"],
                       env=env, capture_output=True, text=True, timeout=900, cwd=str(ROOT))
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  res = json.loads((tmp_path / "device.json").read_text())
  assert res["dry"] and res["device"]["platform"] == "cpu"
  assert res["parity"].startswith("skipped")
  tr = res["train"]
  assert tr["step_s"] > 0 and tr["tokens_per_s"] > 0 and tr["flops_per_step"] > 0
  # pass 2 from the last fused slot (its logits predict the first target), pass 1 up to it
  assert tr["split"] == [15, 16]
  assert res["decode"]["c2cjax_tok_s"] > 0 and res["decode"]["transformers_tok_s"] > 0
  assert res["decode"]["c2cjax_per_layer_tok_s"] > 0
  (pairs,) = res["train_more"]  # --pairs-at-once 2: the same step, two fuser pairs at once
  assert pairs["pairs_at_once"] == 2 and tr["pairs_at_once"] == 1
  # the loss after three steps: Adam turns rounding-level gradient differences into +-lr
  # steps on near-zero gradients (tests/test_fuse.py compares one step's outputs and grads)
  assert pairs["loss"] == pytest.approx(tr["loss"], rel=1e-2)
  assert pairs["step_s"] > 0
  assert tr["step_peak_memory_gib"] > 0  # the step program's own peak (XLA's analysis)
  for k in ("receiver query", "c2c query", "t2t query"):
    assert res["latency"][k] > 0
  md = (tmp_path / "device.md").read_text()
  assert "| train tokens/s |" in md and "DRY RUN" in md


def test_device_script_never_overwrites_and_names_bad_flags(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  (tmp_path / "device.json").write_text("{\"earlier\": 1}")
  script = str(ROOT / "benchmarks" / "device.sh")
  out = subprocess.run([script, "--dry", "--out", str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=60, cwd=str(ROOT))
  assert out.returncode == 2 and "device.json exists" in out.stderr, out.stderr
  assert (tmp_path / "device.json").read_text() == "{\"earlier\": 1}"
  for args, message in ((["--rosetta", str(tmp_path)], "--rosetta and --release-site go together"),
                        (["--rosetta", str(tmp_path), "--release-site", str(tmp_path)],
                         f"no {tmp_path}/rosetta")):
    out = subprocess.run([script, "--dry", "--out", str(tmp_path / "new")] + args, env=env,
                         capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert out.returncode == 2 and message in out.stderr, out.stderr
  bench = [sys.executable, str(ROOT / "benchmarks" / "device_bench.py"), "--dry"]
  for args, message in ((["--out", str(tmp_path)], "device.json exists"),
                        (["--out", str(tmp_path / "new"), "--more-train", "16x"],
                         "'16x' is not BxT"),
                        (["--out", str(tmp_path / "new"), "--steps", "0"],
                         "--steps: 0 must be >= 1")):
    out = subprocess.run(bench + args, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
  assert not (tmp_path / "new").exists()


def test_device_bench_checks_out_first_and_keeps_what_it_measured_on_ctrl_c(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  bench = [sys.executable, str(ROOT / "benchmarks" / "device_bench.py"), "--dry"]
  plain = tmp_path / "plain"
  plain.write_text("not a folder")
  out = subprocess.run(bench + ["--out", str(plain)], env=env, capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 2 and "is a file; give a folder" in out.stderr, out.stderr
  # device.sh checks its flags before the (minutes of) parity tests
  out = subprocess.run([str(ROOT / "benchmarks" / "device.sh"), "--out", str(tmp_path / "x"),
                        "--peak-tflops", "abc"], env=env, capture_output=True, text=True,
                       timeout=60, cwd=str(ROOT))
  assert out.returncode == 2 and "invalid float value: 'abc'" in out.stderr, out.stderr
  assert not (tmp_path / "x").exists()
  # Ctrl-C during the first benchmark: one line, exit 130, what came before it kept. A
  # Ctrl-C that lands in jax's gc callback is dropped there; the run then stops after the
  # section in progress, with that section kept.
  proc = subprocess.Popen(bench + ["--out", str(tmp_path / "run")], env=env, text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  for line in proc.stderr:
    if "models ready; train" in line:
      proc.send_signal(signal.SIGINT)
      break
  rest = proc.stderr.read()
  assert proc.wait(timeout=120) == 130, rest
  assert "Traceback" not in rest, rest
  res = json.loads((tmp_path / "run" / "device.json").read_text())
  assert res["dry"] and "decode" not in res
  if "interrupted during train" in rest:
    assert "train" not in res
  else:
    assert "interrupted after train" in rest, rest
    assert res["train"]["step_s"] > 0


def test_device_release_checks_its_arguments_and_never_overwrites(tmp_path):
  """``device_release.sh`` (the released code on a GPU) names a missing or wrong argument
  and an earlier run's file before any model is written or loaded."""
  script = str(ROOT / "benchmarks" / "device_release.sh")
  rosetta, site, out = tmp_path / "rosetta", tmp_path / "site", tmp_path / "out"
  (rosetta / "rosetta").mkdir(parents=True)
  (site / "transformers").mkdir(parents=True)
  out.mkdir()
  (out / "release_query.json").write_text("earlier")
  for args, message in (
      (["--out", str(out), "--rosetta", str(rosetta)], "--site is required"),
      (["--out", str(out), "--rosetta", str(site), "--site", str(site)],
       f"no {site}/rosetta"),
      (["--out", str(out), "--rosetta", str(rosetta), "--site", str(site), "--steps"],
       ""),  # a flag without its value: set -u stops it
      (["--out", str(out), "--rosetta", str(rosetta), "--site", str(site), "--bogus", "1"],
       "unknown argument --bogus"),
      (["--out", str(out), "--rosetta", str(rosetta), "--site", str(site)],
       "release_query.json exists")):
    run = subprocess.run(["bash", script] + args, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and message in run.stderr, (args, run.stderr)
  assert (out / "release_query.json").read_text() == "earlier"
  assert sorted(p.name for p in out.iterdir()) == ["release_query.json"]


def test_paper_configs_are_one_file_for_both_codes():
  """The paper pair's published configs: c2cjax's random models and the released code's
  (``benchmarks/paper_hf.py``, which imports no jax) are built from the same file."""
  sys.path.insert(0, str(ROOT / "benchmarks"))
  try:
    import paper_hf  # pylint: disable=import-outside-toplevel
  finally:
    sys.path.pop(0)
  from c2cjax.models import paper  # pylint: disable=import-outside-toplevel
  assert paper_hf.NAMES == paper.MODELS
  for name in paper.MODELS:
    assert paper_hf.published(name) == paper.published_config(name)
  r, s = (paper.hf_config(n) for n in paper.MODELS)
  assert (type(r).__name__, r.num_hidden_layers, r.head_dim, r.num_key_value_heads) == (
      "Qwen3Config", 28, 128, 8)
  assert (type(s).__name__, s.num_hidden_layers, s.hidden_size, s.num_key_value_heads) == (
      "Qwen2Config", 24, 896, 2)
  assert r.vocab_size == s.vocab_size == 151936 and r.tie_word_embeddings
  with pytest.raises(ValueError, match="unknown paper model 'qwen3-8b'"):
    paper.published_config("qwen3-8b")
