"""``launch/gpu.sh`` picks the CUDA wheels from the machine's driver (no GPU needed here:
``nvidia-smi`` and Python are stand-ins that record what the script asks of them)."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fake_bin(tmp_path, cuda_version):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  if cuda_version is not None:
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '| NVIDIA-SMI 580.159.04   Driver Version: 580.159.04   "
                   f"CUDA Version: {cuda_version}     |'\n")
    smi.chmod(0o755)
  py = bin_dir / "fakepython"  # records its arguments, then stops the script
  py.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls'}\nexit 3\n")
  py.chmod(0o755)
  return bin_dir, py


@pytest.mark.parametrize("cuda_version, extra", [("13.0", "cuda13"), ("12.4", "cuda"),
                                                 ("14.1", "cuda13")])
def test_gpu_launch_picks_wheels_from_the_driver(tmp_path, cuda_version, extra):
  bin_dir, py = _fake_bin(tmp_path, cuda_version)
  env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", PYTHON=str(py))
  env.pop("CUDA_EXTRA", None)
  run = subprocess.run(["bash", str(ROOT / "launch" / "gpu.sh")], env=env,
                       capture_output=True, text=True, timeout=60)
  assert run.returncode == 3, run.stderr
  assert (tmp_path / "calls").read_text().split("\n")[0] == f"-m pip install -q -e .[{extra}]"


@pytest.mark.parametrize("cuda_version, extra_env, message", [
    (None, None, "nvidia-smi found no NVIDIA driver"),
    ("13.0", "cuda11", "CUDA_EXTRA must be cuda (CUDA 12) or cuda13, got cuda11")])
def test_gpu_launch_refuses_before_installing(tmp_path, cuda_version, extra_env, message):
  bin_dir, py = _fake_bin(tmp_path, cuda_version)
  env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", PYTHON=str(py))
  env.pop("CUDA_EXTRA", None)
  if extra_env:
    env["CUDA_EXTRA"] = extra_env
  run = subprocess.run(["bash", str(ROOT / "launch" / "gpu.sh")], env=env,
                       capture_output=True, text=True, timeout=60)
  assert run.returncode == 2 and message in run.stderr, run.stderr
  assert not (tmp_path / "calls").exists()
