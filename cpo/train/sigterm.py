"""SIGTERM at any moment of a run ends it with one message and exit status 143, never silently.

Lightning handles SIGTERM only inside ``trainer.fit``/``validate`` (it stops at the next optimizer step, and
the checkpoint callback saves ``last.ckpt``). Before that (building the data, loading the model, evaluating the
starting policy) and after it (the held-out table, saving the policy) Python's default action killed the
process without a word, also when a second SIGTERM came during model loading. :class:`SigtermGuard` holds the
signal for the whole run:

- outside Lightning, the first SIGTERM raises the run's :class:`cpo.runs.RunInterrupted` at once;
- inside Lightning, Lightning's own handler (which calls this one too, being the handler it found) stops the
  run; a signal that came before Lightning installed its handler, or where Lightning does not look (its last
  validation batch, after its teardown), is raised when Lightning returns, or at the start of training;
- every later SIGTERM is ignored, so the message of the first is the one that is printed.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Callable

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SigtermGuard:
    """``with SigtermGuard(stop) as guard:`` around a run; ``stop(signum)`` builds the exception that ends it."""

    def __init__(self, stop: Callable[[int], BaseException]):
        self._stop = stop
        self._inside_lightning = False
        self._installed = False
        self._previous = None
        self.pending: int | None = None  # a signal received while Lightning runs, not yet acted on
        self.stopped = False  # the run is ending for a signal: later ones are ignored

    def __enter__(self) -> "SigtermGuard":
        if threading.current_thread() is threading.main_thread():  # signal handlers belong to the main thread
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and isinstance(exc, SystemExit) and exc.code not in (None, 0):
            self.stopped = True
        self.release()

    def release(self) -> None:
        """Hand SIGTERM back (the run's results are written): ignored while a stopped run prints its message."""
        if self._installed:
            signal.signal(signal.SIGTERM, signal.SIG_IGN if self.stopped else self._previous)
            self._installed = False

    def _handle(self, signum: int, frame) -> None:
        if self.stopped:
            return
        if self._inside_lightning:
            self.pending = signum
            return
        self.stopped = True
        raise self._stop(signum)

    @contextlib.contextmanager
    def lightning(self):
        """Around ``trainer.fit``/``validate`` and the handling of Lightning's ``SIGTERMException``."""
        self._inside_lightning = True
        try:
            yield
        except SystemExit:  # RunInterrupted, SIGTERMException: the run is ending for the signal already
            self.stopped = True
            raise
        finally:
            self._inside_lightning = False
        if self.pending is not None and not self.stopped:
            self.stopped = True
            raise self._stop(self.pending)

    def callback(self) -> L.Callback:
        return _StopBeforeTraining(self)


class _StopBeforeTraining(L.Callback):
    """A SIGTERM that came while Lightning set up (before its own handler was installed) stops the run before its
    first batch, as Lightning stops it between batches (the checkpoint callback then saves nothing new)."""

    def __init__(self, guard: SigtermGuard):
        self.guard = guard

    def on_train_start(self, trainer, pl_module) -> None:
        if self.guard.pending is not None:
            raise SIGTERMException()


def interruption(signum: int, out_dir: Path, ckpt_path: str | None = None):
    """The RunInterrupted for a signal: the checkpoint a resume would start from (the folder's last.ckpt, a file or
    the folder a sharded strategy writes, else the checkpoint this run resumed from), and its step."""
    from cpo.runs import RunInterrupted, check_checkpoint

    last = Path(out_dir) / "checkpoints" / "last.ckpt"
    ckpt = last if last.exists() else (Path(ckpt_path) if ckpt_path and Path(ckpt_path).exists() else None)
    try:
        step = check_checkpoint(ckpt)["global_step"] if ckpt is not None else None
    except Exception:  # noqa: BLE001 - a checkpoint being written as the signal came: the message names it anyway
        step = None
    return RunInterrupted(signum, ckpt, step)


def resume_command(argv: list[str], run_dir: str, sweep_dir: str | None = None, python: str | None = None) -> str:
    """The command that continues an interrupted run: the one given (``argv``, the program first) with the run's
    folder named (``hydra.run.dir``, or under ``-m`` the sweep's ``hydra.sweep.dir``), since a plain run's
    folder is named by the clock and the same command would start another run elsewhere."""
    import os
    import shlex
    import shutil
    import sys

    key, value = ("hydra.sweep.dir", sweep_dir) if sweep_dir is not None else ("hydra.run.dir", run_dir)
    args = [a for a in argv[1:] if not a.lstrip("+").startswith(f"{key}=")] + [f"{key}={value}"]
    if python is None:
        on_path = shutil.which("python")
        python = "python" if on_path and os.path.realpath(on_path) == os.path.realpath(sys.executable) \
            else sys.executable
    return shlex.join([python, argv[0], *args])
