"""The benchmark scripts' count flags: a bad value is one usage line (exit 2) before any
model loads, never a traceback or a division by zero after minutes of work."""

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,args,message", [
    ("c2c_latency.py", ["--reps", "0"], "argument --reps: 0 must be >= 1"),
    ("c2c_latency.py", ["--answer", "32", "-1"], "argument --answer: -1 must be >= 1"),
    ("decode.py", ["--reps", "0"], "argument --reps: 0 must be >= 1"),
    ("decode.py", ["--prompt-tokens", "-5"], "argument --prompt-tokens: -5 must be >= 0"),
    ("decode.py", ["--batches", "x"], "argument --batches: 'x' is not an integer"),
    ("matmul_peak.py", ["--sizes", "0"], "argument --sizes: 0 must be >= 1"),
    ("matmul_peak.py", ["--shapes", "12x3"], "argument --shapes: '12x3' is not MxKxN"),
    ("matmul_peak.py", ["--shapes", "512x0x4"], "argument --shapes: '512x0x4' is not MxKxN"),
    ("matmul_peak.py", ["--shapes", "steps", "8x8x8"], "argument --shapes: 'steps' stands alone"),
    ("c2c_prefill_parts.py", ["--batch", "0"], "argument --batch: 0 must be >= 1"),
    ("train_step.py", ["--batch", "0"], "argument --batch: 0 must be >= 1"),
    ("train_step.py", ["--accum", "-1"], "argument --accum: -1 must be >= 1"),
])
def test_bad_count_is_one_usage_line(script, args, message):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], env=env,
                       capture_output=True, text=True, timeout=120, cwd=str(ROOT))
  assert out.returncode == 2, out.stderr[-2000:]
  assert message in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]
