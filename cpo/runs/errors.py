"""What can stop a run before, during or after training, each as one sentence that says what to do next.

The ``ConfigError`` subclasses are expected errors: apps print them as ``error: ...`` and exit 2
(``cpo.cli.one_sentence_errors``). ``RunInterrupted`` is not an error of the user's making but an
exit: it carries the exit status a scheduler should see.
"""
from __future__ import annotations

import os
import signal

from cpo.errors import ConfigError


class FolderBusy(ConfigError):
    """Another live process holds the run folder's lock (see ``RunFolder.acquire``)."""


class StaleRun(ConfigError):
    """What is in the folder (or the named checkpoint) was made with a configuration that changes the result."""


class CorruptCheckpoint(ConfigError):
    """A checkpoint that cannot be what a finished save wrote: truncated, not a torch archive, no training state."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(
            f"{path} is truncated or corrupt ({reason}): delete it to start this run over, "
            f"or resume from another checkpoint with ckpt_path=<file>"
        )


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class RunInterrupted(SystemExit):
    """A training run stopped by a signal (SIGTERM from SLURM preemption or ``timeout``) after its checkpoint was saved.

    A ``SystemExit``, so that the one-sentence wrapper and Hydra let it through like any exit, with
    ``code = 128 + signum`` (143 for SIGTERM), the shell's "killed by signal N": a scheduler, a sweep
    or a CI job sees a failure, never the success that Lightning's own ``SIGTERMException`` (exit 0)
    reports. ``str(e)`` is the one sentence to print before exiting; ``checkpoint`` is where the run
    resumes from (None when it was stopped before its first checkpoint). ``resume`` is the command that
    continues it, set by the app that knows its command line and run folder (train.py): a plain run's
    folder is named by the clock, so "the same command" would start another run in another folder.
    """

    def __init__(self, signum: int, checkpoint: str | os.PathLike | None = None, step: int | None = None,
                 resume: str | None = None):
        self.signum = int(signum)
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.step = step
        self.resume = resume
        super().__init__(128 + self.signum)

    @property
    def message(self) -> str:
        name = _signal_name(self.signum)
        if self.checkpoint is None:
            how = f"start it over with: {self.resume}" if self.resume else "run the same command again to start it over"
            return f"training was stopped by {name} before its first checkpoint: {how}"
        at = f" at step {self.step}" if self.step is not None else ""
        how = f"resume it with: {self.resume}" if self.resume else "run the same command again to resume from it"
        return f"training was stopped by {name}{at} after saving {self.checkpoint}: {how}"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        # Rebuilt from its own arguments, not SystemExit's (code,): a joblib launcher pickles it back to the sweep.
        return (type(self), (self.signum, self.checkpoint, self.step, self.resume), self.__dict__)
