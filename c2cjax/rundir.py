"""A training run's directory: manifest, metrics log, checkpoints, and what is never lost.

  workdir/
    manifest.json        resolved config, the models' identities, c2cjax version, resumes
    checkpoints/<step>/  orbax (atomic: a step directory appears only when complete)
    metrics.jsonl        one strict-JSON object per logged step (non-finite values: null)
    tb/                  TensorBoard events
    fuser/               the exported fuser
    final_metrics.json   written last (atomically): its presence marks a finished run

Rules: a resumed run must have the config and models of its manifest (fields in
:data:`c2cjax.config_check.SAFE_TO_CHANGE` may change with ``allow_config_change``); a
finished run is never rerun or overwritten; steps replayed after a resume are not logged
twice; a checkpoint I/O failure is one :class:`CheckpointIOError` line naming the path and
the last good step, which stays on disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
import time
from typing import Any

from c2cjax import config_check, files

MANIFEST, FINAL, METRICS = "manifest.json", "final_metrics.json", "metrics.jsonl"


class RunDirError(RuntimeError):
  """The run directory cannot be used as asked (config changed, not a directory...)."""


class CheckpointIOError(OSError):
  """Writing or reading a checkpoint failed; the message names the path."""


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite loss, gradient norm or parameter."""


class Interrupted(RuntimeError):
  """A stop signal ended the run between steps; the message says what was saved."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum


class StopSignals:
  """SIGINT and SIGTERM (Ctrl-C; a preemptible VM's notice) as a request to stop.

  Each signal is recorded (:attr:`signum`). Inside :meth:`deferred` (the training loop)
  the first one does nothing more: the loop saves the step it reached and stops. Outside
  it (loading, compiling), and for a second signal, ``KeyboardInterrupt(signum)`` is raised
  at once. As a context manager it holds the handlers for its block (the CLI: the whole
  run); :meth:`deferred` installs them for its own block when they are not held. The
  previous handlers come back on exit. Python installs handlers only in the main thread;
  elsewhere signals keep theirs.
  """

  SIGNALS = ("SIGINT", "SIGTERM")

  def __init__(self):
    self.signum: int | None = None
    self.defer = False
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    first = self.signum is None
    self.signum = signum
    if not (first and self.defer):
      raise KeyboardInterrupt(signum)

  def __enter__(self) -> "StopSignals":
    import signal
    import threading
    if not self._previous and threading.current_thread() is threading.main_thread():
      for name in self.SIGNALS:
        sig = getattr(signal, name)
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    import signal
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  @contextlib.contextmanager
  def deferred(self):
    """A block in which the first signal is only recorded (check :attr:`signum`)."""
    held = bool(self._previous)
    if not held:
      self.__enter__()
    self.defer = True
    try:
      yield self
    finally:
      self.defer = False
      if not held:
        self.__exit__()


def prepare(workdir: str | os.PathLike) -> pathlib.Path:
  """``workdir`` (absolute), created with its ``checkpoints/`` folder and checked writable."""
  workdir = pathlib.Path(workdir).expanduser().absolute()
  for d in (workdir, workdir / "checkpoints"):
    try:
      d.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
      raise RunDirError(f"{d} is not a directory (a file is in the way)") from None
    except OSError as e:
      raise RunDirError(f"cannot create {d}: {e.strerror or e}") from None
  # An unwritable or full disk fails here, before any model loads. The probe is named per
  # host and process: every process of a multi-process run probes the same shared folder.
  probe = workdir / "checkpoints" / f".write_test.{socket.gethostname()}.{os.getpid()}"
  try:
    files.atomic_write_text(probe, "ok")
    probe.unlink()
  except OSError as e:
    raise RunDirError(f"cannot write to {workdir / 'checkpoints'}: {e.strerror or e}") from None
  return workdir


def finished(workdir: pathlib.Path) -> dict | None:
  """The final metrics of a finished run, else None."""
  path = workdir / FINAL
  return files.read_json(path, "final metrics") if path.exists() else None


# --- manifest ------------------------------------------------------------------------------
def _version() -> str:
  import c2cjax
  return c2cjax.__version__


def check_config(workdir: pathlib.Path, cfg, allow_change: bool) -> dict[str, tuple]:
  """Compares ``cfg`` with the run's manifest (if any); returns the allowed differences.

  Raises:
    RunDirError: fields differ that ``allow_change`` does not cover (each one listed).
  """
  path = workdir / MANIFEST
  if not path.exists():
    return {}
  old = files.read_json(path, "run manifest")["config"]
  diff = config_check.differences(old, cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
  safe, unsafe = config_check.split_safe(diff)
  if unsafe or (safe and not allow_change):
    bad = unsafe if allow_change else diff
    lines = [f"  {k}: {a!r} in the run, {b!r} now" + ("" if k in unsafe else "  (allowed with "
             "--allow_config_change)") for k, (a, b) in bad.items()]
    raise RunDirError(
        f"{workdir} holds a run with a different config ({path}):\n" + "\n".join(lines) +
        "\nresume with the run's config, or use a new workdir" +
        (f"; fields safe to change with --allow_config_change: "
         f"{', '.join(config_check.SAFE_TO_CHANGE)}" if unsafe else ""))
  return safe


def check_models(workdir: pathlib.Path, models: dict[str, Any]) -> None:
  """Raises RunDirError if the manifest's model identities differ from ``models``."""
  path = workdir / MANIFEST
  if not path.exists():
    return
  old = files.read_json(path, "run manifest").get("models", {})
  problems = []
  for role, ident in models.items():
    before = old.get(role)
    if before is None:
      continue
    items = zip(before, ident) if isinstance(ident, list) else [(before, ident)]
    for a, b in items:
      keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
      problems += [f"  {role} {k}: {a.get(k)!r} in the run, {b.get(k)!r} now" for k in keys]
  if problems:
    raise RunDirError(f"{workdir} was trained with other model weights ({path}):\n"
                      + "\n".join(problems) + "\nuse the same models, or a new workdir")


def write_manifest(workdir: pathlib.Path, cfg, models: dict[str, Any], *, step: int = 0,
                   changes: dict[str, tuple] | None = None) -> None:
  """Writes (or, on a resume, updates) ``manifest.json`` atomically."""
  path = workdir / MANIFEST
  manifest = (files.read_json(path, "run manifest") if path.exists() else
              {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "resumes": []})
  manifest.update(config=cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg),
                  models=models, c2cjax_version=_version())
  if step:
    manifest["resumes"].append({"step": step, "c2cjax_version": _version(),
                                "changed": {k: list(v) for k, v in (changes or {}).items()}})
  files.atomic_write_text(path, files.dumps_strict(manifest, indent=2, default=str) + "\n")


# --- metrics ---------------------------------------------------------------------------------
class MetricsLog:
  """``metrics.jsonl`` (+ TensorBoard) of a run that starts or resumes at ``start``.

  On a resume, rows after ``start`` (logged by the interrupted process after its last
  checkpoint) are dropped from ``metrics.jsonl``, and TensorBoard is told to purge its events
  from ``start + 1`` on (``purge_step``): the replayed steps appear once in both.
  """

  def __init__(self, workdir: pathlib.Path, start: int, *, tensorboard: bool, enabled=True):
    self.path = workdir / METRICS
    self.enabled = enabled
    self.file = self.writer = None
    self.last: dict[str, Any] = {}  # newest value of every metric (for final_metrics.json)
    if not enabled:
      return
    if self.path.exists():
      self._reload(start)
    self.file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      from tensorboardX import SummaryWriter
      self.writer = SummaryWriter(str(workdir / "tb"), purge_step=start + 1 if start else None)

  def _reload(self, start: int) -> None:
    """Keeps the rows up to ``start`` (all of them when starting afresh: none)."""
    keep = []
    for line in self.path.read_text(encoding="utf-8").splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by the kill
        continue
      if row.get("step", 0) <= start:
        keep.append(line + "\n")
        self.last.update({k: v for k, v in row.items() if k != "step"})
    files.atomic_write_text(self.path, "".join(keep))

  def log(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    self.last.update(metrics)
    try:
      self.file.write(files.dumps_strict({"step": step, **metrics}) + "\n")
      self.file.flush()
      if self.writer is not None:
        for k, v in metrics.items():
          self.writer.add_scalar(k, v, step)
    except OSError as e:
      raise RunDirError(f"cannot write the metrics of step {step} to {self.path.parent}: "
                        f"{e.strerror or e}") from e

  def close(self) -> None:
    for f in (self.file, self.writer):
      if f is not None:
        f.close()
    self.file = self.writer = None


# --- checkpoints -------------------------------------------------------------------------------
class Checkpoints:
  """The run's orbax ``CheckpointManager``; every failure is one :class:`CheckpointIOError`."""

  def __init__(self, directory: pathlib.Path, *, keep: int, use_async: bool):
    import orbax.checkpoint as ocp
    self.dir = directory
    try:
      self.mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=use_async))
    except Exception as e:  # orbax raises many types; the cause stays chained
      raise io_error("opening checkpoints", directory, e) from e

  def latest_step(self) -> int:
    return self.mngr.latest_step() or 0

  def restore(self, step: int, args):
    try:
      return self.mngr.restore(step, args=args)
    except Exception as e:
      raise io_error(f"restoring checkpoint step {step}", self.dir, e) from e

  def save(self, step: int, args) -> None:
    try:
      self.mngr.save(step, args=args)
    except Exception as e:
      raise io_error(f"saving checkpoint step {step}", self.dir, e) from e

  def wait(self) -> None:
    try:
      self.mngr.wait_until_finished()
    except Exception as e:
      raise io_error("writing a checkpoint", self.dir, e) from e

  def close(self, *, quiet: bool = False) -> None:
    """Waits for pending writes and closes; ``quiet`` (while another error is raised)
    swallows a second failure instead of replacing the first."""
    try:
      self.wait()
      self.mngr.close()
    except Exception:
      if not quiet:
        raise


class FiniteGuard:
  """Collects each step's on-device ``finite`` flag without waiting for it; :meth:`check`
  (before a checkpoint, an evaluation or the export) raises :class:`NonFiniteError` at the
  first non-finite step, once the last good checkpoint's write has finished."""

  def __init__(self, ckpt: Checkpoints):
    self.ckpt, self.pending = ckpt, []

  def add(self, step: int, metrics: dict) -> None:
    self.pending.append((step, metrics))

  def check(self) -> None:
    import jax
    flags = jax.device_get([m["finite"] for _, m in self.pending])
    bad = next((p for p, ok in zip(self.pending, flags) if not ok), None)
    self.pending.clear()
    if bad is not None:
      self.ckpt.wait()
      values = {k: float(v) for k, v in jax.device_get(bad[1]).items()
                if k in ("loss", "grad_norm")}
      raise NonFiniteError(stop_message(bad[0], values, self.ckpt.dir))


def committed_steps(checkpoints: pathlib.Path) -> list[int]:
  """Steps whose checkpoint directories are complete (orbax renames them when done)."""
  if not checkpoints.is_dir():
    return []
  return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit() and p.is_dir())


def io_error(action: str, path: pathlib.Path, err: BaseException,
             checkpoints: pathlib.Path | None = None) -> CheckpointIOError:
  """One line: what failed, where, why, and which checkpoint (in ``checkpoints``, default
  ``path``) is still good."""
  steps = committed_steps(checkpoints or path)
  why = getattr(err, "strerror", None) or (str(err).splitlines() or ["no message"])[0]
  good = (f"the last good checkpoint, step {steps[-1]}, is intact" if steps
          else "no earlier checkpoint exists")
  return CheckpointIOError(f"{action} under {path} failed ({type(err).__name__}: {why}); {good}")


def stop_message(step: int, values: dict[str, float], checkpoints: pathlib.Path) -> str:
  """The NonFiniteError message: the step, the values, the last good checkpoint."""
  shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
  steps = committed_steps(checkpoints)
  good = (f"the last good checkpoint is step {steps[-1]} in {checkpoints}" if steps else
          "no checkpoint was written")
  return (f"step {step}: non-finite training state ({shown}); stopped without saving it: "
          f"{good}. Lower optimizer.lr (or check the data) and start a new workdir: "
          "resuming with the same config would repeat it")

