"""A console a person can read: each line once, no progress-bar floods in log files, no library chatter.

Hydra sends every log record to the console and to the run's log file (``<run dir>/train.log``), so
the project's own messages (:func:`say`) land in both. Lightning adds a console handler of its own to
the ``lightning`` logger *and* lets records propagate to Hydra's, which printed every line twice;
:func:`quiet_libraries` removes that handler and drops Lightning's advertising tips. When stderr is
not a terminal (sweeps, SLURM files), the progress bar is replaced by :class:`ProgressLog`, one line
every ``every_seconds`` (cpo.train.callbacks.ProgressLog). Lightning is imported lazily here, so that
:func:`quiet_libraries` can run before the libraries' import-time warnings.
"""
from __future__ import annotations

import logging
import sys
import warnings

log = logging.getLogger("cpo")

# Warnings that say nothing to a user of this project (deprecations inside the libraries themselves).
_SILENCED_WARNINGS = (
    "pkg_resources is deprecated",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    "The number of training batches",
    "does not have many workers",
    "Experiment logs directory",
    "The `srun` command is available on your system",
)
_SILENCED_LOG_LINES = ("💡 Tip:", "was configured so validation will run", "Loading `train_dataloader` to estimate")


class _DropLines(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(s in msg for s in _SILENCED_LOG_LINES)


_LOGGING = False  # set under Hydra (train.py): say() then logs, so its lines also reach the run's log file


def quiet_libraries() -> None:
    """Silence library chatter; keep every record of ours and Lightning's real messages, once."""
    global _LOGGING
    for pattern in _SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{pattern}")
    import lightning  # noqa: F401  (its import adds the console handler removed below)

    if logging.getLogger().hasHandlers():  # under Hydra: the root handlers print and write the log file
        _LOGGING = True
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                lg.removeHandler(h)
            lg.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.pytorch"):
        logging.getLogger(name).addFilter(_DropLines())


def say(msg: str) -> None:
    """A message of the project to the user (rank 0 only): logged when logging is configured (console and
    the run's log file under Hydra), printed otherwise (library use)."""
    from lightning.pytorch.utilities import rank_zero_only  # imported late: quiet_libraries() runs first

    if rank_zero_only.rank != 0:
        return
    if _LOGGING:
        for line in msg.split("\n"):
            log.info(line)
    else:
        print(msg, flush=True)


def interactive() -> bool:
    """True when a person watches a terminal (then progress bars are fine)."""
    return sys.stderr.isatty()


def note_in_log_file(message: str) -> None:
    """Write a line into the run's log file only (under Hydra: <run dir>/<app>.log), e.g. the one-sentence
    error the console already shows on stderr, so that the folder itself says why the run failed."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(logging.LogRecord("cpo", logging.ERROR, __file__, 0, message, None, None))
