"""A real multi-process run: 2 CPU processes joined by ``jax.distributed`` on localhost
(2 fake devices each) train configs/tiny.py's models on tiny tokenizers, checkpoint, lose a
process to SIGKILL, restart and resume; losses equal one process's run of the same global
batch on 4 devices, and each process read only its own rows of every batch
(tests/multiprocess_worker.py logs them). A SIGTERM to one of two processes stops both at
one saved step, and the resumed run trains the next step as an uninterrupted run does."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multiprocess_worker.py"
TIMEOUT_S = 600
DIST_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(tmp, name: str, workdir, devices: int, process: int | None = None,
           port: int | None = None, extra: tuple[str, ...] = ()) -> subprocess.Popen:
  env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
  env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  reads = tmp / f"reads_{name}"
  reads.mkdir(exist_ok=True)
  if process is not None:
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(process))
  log = open(tmp / f"log_{name}_{process}.txt", "a")
  return subprocess.Popen([sys.executable, str(WORKER), str(workdir), str(tmp / "tfds"),
                           str(reads), *extra], env=env, stdout=log, stderr=subprocess.STDOUT,
                          cwd=str(ROOT))


def _logs(tmp) -> str:
  return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp.glob("log_*")))


def _wait(tmp, procs):
  deadline = time.time() + TIMEOUT_S
  for p in procs:
    try:
      rc = p.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("worker timed out\n" + _logs(tmp))
    assert rc == 0, f"worker exited with {rc}\n" + _logs(tmp)


def _wait_until(tmp, procs, ready, what: str) -> None:
  """Polls ``ready()`` while every worker runs; fails (killing them) if one exits first or
  ``TIMEOUT_S`` passes."""
  deadline = time.time() + TIMEOUT_S
  while not ready():
    assert all(p.poll() is None for p in procs), f"exited before {what}\n" + _logs(tmp)
    if time.time() > deadline:
      for p in procs:
        p.kill()
      pytest.fail(f"no {what} in time\n" + _logs(tmp))
    time.sleep(0.05)


def _losses(workdir) -> list[tuple[int, float]]:
  rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]


def _reads(path) -> list[tuple[int, list[str]]]:
  return [(r["step"], r["rows"]) for r in map(json.loads, open(path))]


def test_two_processes_kill_resume_match_one_process(tmp_path):
  # One process, 4 fake devices: the reference (it also builds the TFDS data once).
  _wait(tmp_path, [_start(tmp_path, "one", tmp_path / "one", 4)])
  ref_loss = dict(_losses(tmp_path / "one"))
  ref_rows = dict(_reads(tmp_path / "reads_one" / "reads_0.jsonl"))
  assert sorted(ref_loss) == sorted(ref_rows) == [1, 2, 3, 4]

  # Two processes; process 1 is killed once the step-2 checkpoint is committed. Process 0
  # cannot go on without its peer (it waits in a collective): it is stopped too.
  work = tmp_path / "two"
  port = _free_port()
  procs = [_start(tmp_path, "two", work, 2, i, port) for i in range(2)]
  _wait_until(tmp_path, procs, lambda: (work / "checkpoints" / "2").is_dir(), "a checkpoint")
  procs[1].send_signal(signal.SIGKILL)
  procs[1].wait()
  time.sleep(1.0)
  procs[0].kill()
  procs[0].wait()
  assert not (work / "fuser").exists()  # the run did not finish
  before = {i: [s for s, _ in _reads(tmp_path / "reads_two" / f"reads_{i}.jsonl")]
            for i in range(2)}

  # Both restart (a fresh coordinator) and resume from step 2.
  port = _free_port()
  _wait(tmp_path, [_start(tmp_path, "two", work, 2, i, port) for i in range(2)])
  assert (work / "fuser").is_dir() and (work / "final_metrics.json").exists()

  # Each process read only its own rows: with micro-batches of 4 rows (2 a process), its
  # rows of step s are rows [4a + 2i, 4a + 2i + 2) of the one-process batch, a = 0, 1.
  reads = {i: _reads(tmp_path / "reads_two" / f"reads_{i}.jsonl") for i in range(2)}
  for i in range(2):
    steps = [s for s, _ in reads[i]]
    assert steps[:len(before[i])] == before[i] and steps[len(before[i])] == 3, steps  # resumed
    assert set(steps) == {1, 2, 3, 4}
    for step, rows in reads[i]:
      own = [r for a in range(2) for r in ref_rows[step][4 * a + 2 * i:4 * a + 2 * i + 2]]
      assert rows == own, (f"process {i}, step {step}: not its rows of the one-process batch "
                           "(did a host skip a prompt longer than the worker's max_len?)")
  for step, rows in ref_rows.items():
    mine = [set(r for s, rs in reads[i] if s == step for r in rs) for i in range(2)]
    assert not mine[0] & mine[1] and mine[0] | mine[1] == set(rows), step

  got = _losses(work)
  assert {s for s, _ in got} == set(ref_loss)
  for step, loss in got:
    assert loss == pytest.approx(ref_loss[step], rel=1e-5), (step, loss, ref_loss[step])


def test_sigterm_to_one_process_stops_both_at_one_saved_step(tmp_path):
  """A preemption notice (SIGTERM) reaching one process: both stop at the same step and
  save it together (the stop request is agreed on before every step)."""
  work = tmp_path / "w"
  port = _free_port()
  procs = [_start(tmp_path, "stop", work, 2, i, port, ("500", "1000")) for i in range(2)]
  reads = tmp_path / "reads_stop" / "reads_1.jsonl"
  _wait_until(tmp_path, procs,
              lambda: reads.exists() and len(reads.read_text().splitlines()) >= 2, "two steps")
  procs[1].send_signal(signal.SIGTERM)
  rcs = [p.wait(timeout=TIMEOUT_S) for p in procs]
  logs = [(tmp_path / f"log_stop_{i}.txt").read_text() for i in range(2)]
  assert rcs == [3, 3], f"{rcs}\n" + _logs(tmp_path)
  stopped = [next(l for l in log.splitlines() if l.startswith("WORKER_STOPPED")) for log in logs]
  saved = [int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit()]
  assert len(saved) == 1 and 2 <= saved[0] < 500, saved
  assert stopped[1].startswith(f"WORKER_STOPPED SIGTERM at step {saved[0]}: saved checkpoint "
                               f"{saved[0]}"), stopped
  assert stopped[0].startswith(f"WORKER_STOPPED a stop signal to another process at step "
                               f"{saved[0]}: saved checkpoint {saved[0]}"), stopped

  # The stop agreed on after the next batch was read: that batch went back, so the resumed
  # run trains the batch an uninterrupted run trains at that step, with the same loss.
  s = saved[0]
  for name, workdir, steps in (("stop", work, 1), ("ref", tmp_path / "ref", s + 1)):
    port = _free_port()  # the same config (a resume refuses another); stop after `steps`
    _wait(tmp_path, [_start(tmp_path, name, workdir, 2, i, port, ("500", "1000", str(steps)))
                     for i in range(2)])
  for i in range(2):
    got = _reads(tmp_path / "reads_stop" / f"reads_{i}.jsonl")
    ref = dict(_reads(tmp_path / "reads_ref" / f"reads_{i}.jsonl"))
    assert [t for t, _ in got] == list(range(1, s + 2)), got  # no batch read twice or lost
    assert dict(got)[s + 1] == ref[s + 1], (i, s)
  ref_loss = dict(_losses(tmp_path / "ref"))
  assert dict(_losses(work))[s + 1] == pytest.approx(ref_loss[s + 1], rel=1e-5)
