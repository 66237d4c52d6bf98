"""One console for every app: plain lines, each once, no library chatter, no progress-bar floods in log files.

The convention (``conf/hydra/job_logging/cpo.yaml``, used by every app):

- the console shows a message as it is; a warning as ``warning: ...``, an error as ``error: ...`` (the
  one-sentence failures of :mod:`cpo.cli` look the same);
- the launch's log file (``<run dir>/<app>.log``, e.g. ``train.log``) holds the same lines with a time stamp;
- library chatter is dropped (:class:`LibraryNoise`): Lightning's device lines and tips, deprecation warnings
  inside the libraries; W&B speaks only through warnings and errors (cpo.train.loggers);
- progress: a bar in a terminal, and one line every 30 s elsewhere (:func:`progress`; the training loop's
  stand-in is cpo.train.callbacks.ProgressLog), so a log file never fills with carriage returns.

The log file is the launch's record in its folder (:class:`LaunchLog`): records wait in memory until the app
owns the folder (cpo.cli.accept_launch), so a launch that is refused before (another run's folder, a second
writer, a bad setting) leaves nothing of itself there.
"""
from __future__ import annotations

import logging
import sys
import time
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
# Log lines of the libraries that say nothing to a user of this project. The device lines are replaced by the
# run's own line (cpo.train.run: "devices: ..."), the fit's end by the held-out evaluation that follows it.
_SILENCED_LOG_LINES = (
    "💡 Tip:", "was configured so validation will run", "Loading `train_dataloader` to estimate",
    "GPU available:", "TPU available:", "HPU available:", "IPU available:", "`Trainer.fit` stopped:",
)


class LibraryNoise(logging.Filter):
    """Drops the library lines of ``_SILENCED_LOG_LINES``, whichever logger they come from (a handler filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(("cpo", "__main__")):
            return True
        msg = record.getMessage()
        return not any(s in msg for s in _SILENCED_LOG_LINES)


class ConsoleFormatter(logging.Formatter):
    """A message as it is; ``warning: ...`` / ``error: ...`` from WARNING up; ``timestamps``: each line stamped."""

    def __init__(self, timestamps: bool = False):
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.levelno >= logging.WARNING:
            prefix = "error: " if record.levelno >= logging.ERROR else "warning: "
            if not text.startswith(prefix):
                text = prefix + text
        if not self.timestamps:
            return text
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return "\n".join(f"{stamp} {line}" if line else line for line in text.split("\n"))


class _LogFile(logging.FileHandler):
    """A log file that, when it cannot be written (a full disk), says so once and lets the console carry on,
    instead of printing logging's traceback for every line."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if self.failed:
            return
        self.failed = True
        err = sys.exc_info()[1]
        print(f"warning: cannot write the log file {self.baseFilename} ({err}); messages go to the console only",
              file=sys.stderr, flush=True)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)


class LaunchLog(logging.Handler):
    """The log file of one launch, opened only when the app owns its folder (:func:`open_launch_logs`).

    Until then records are held in memory; a launch refused before it owns the folder drops them, so a finished
    run's log never gains the lines of a launch that did not happen. Opened, it appends (``mode="a"``), as
    Hydra's own file handler does, so a resumed run continues its log.
    """

    HOLD = 20000  # records held at most before the folder is owned (the earliest are kept)

    def __init__(self, filename: str, encoding: str = "utf-8"):
        super().__init__()
        self.filename, self.encoding = filename, encoding
        self._file: logging.FileHandler | None = None
        self._held: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self._file is not None:
            self._file.emit(record)
        elif len(self._held) < self.HOLD:
            self._held.append(record)

    def open(self) -> None:
        if self._file is not None:
            return
        self._file = _LogFile(self.filename, mode="a", encoding=self.encoding)
        self._file.setFormatter(self.formatter)
        for record in self._held:
            self._file.emit(record)
        self._held.clear()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._held.clear()
        super().close()


def launch_logs() -> list[LaunchLog]:
    return [h for h in logging.getLogger().handlers if isinstance(h, LaunchLog)]


def open_launch_logs() -> None:
    """The app owns its folder now: write the held lines into its log file and keep appending."""
    for h in launch_logs():
        h.open()


_LOGGING = False  # set under Hydra: say() then logs, so its lines also reach the run's log file


def quiet_libraries() -> None:
    """Silence library chatter; keep every record of ours and the libraries' real messages, once.

    Cheap (imports nothing): every app calls it first (cpo.cli). Lightning adds a console handler of its own
    when it is imported before logging is configured, and also lets records propagate, which printed every
    line twice; that handler is removed here when Lightning is already imported (otherwise, under Hydra's
    logging, Lightning adds none).
    """
    global _LOGGING
    for pattern in _SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{pattern}")
    if not interactive():  # the hub's and transformers' bars ("Loading checkpoint shards") in a log file
        import os

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "huggingface_hub" in sys.modules:
            sys.modules["huggingface_hub"].utils.disable_progress_bars()
        if "transformers" in sys.modules:
            sys.modules["transformers"].utils.logging.disable_progress_bar()
    if logging.getLogger().hasHandlers():  # under Hydra: the root handlers print and write the log file
        _LOGGING = True
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                lg.removeHandler(h)
            lg.propagate = True
    noise = LibraryNoise()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "lightning.pytorch"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, LibraryNoise) for f in lg.filters):
            lg.addFilter(noise)


def _rank() -> int:
    """This process's global rank: Lightning's when it is loaded (strategies update it), else the launcher's."""
    if "lightning" in sys.modules:
        from lightning.pytorch.utilities import rank_zero_only

        return int(rank_zero_only.rank)
    import os

    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def say(msg: str) -> None:
    """A message of the project to the user (rank 0 only): logged when logging is configured (console and
    the run's log file under Hydra), printed otherwise (library use). Every app's own lines go through here,
    so that its log file holds what its console showed."""
    if _rank() != 0:
        return
    if _LOGGING:
        for line in msg.split("\n"):
            log.info(line)
    else:
        print(msg, flush=True)


def warn(msg: str) -> None:
    """A warning of the project to the user (rank 0 only): ``warning: ...`` on the console and in the log file."""
    if _rank() != 0:
        return
    if _LOGGING:
        log.warning(msg)
    else:
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def interactive() -> bool:
    """True when a person watches a terminal (then progress bars are fine)."""
    return sys.stderr.isatty()


def note_in_log_file(message: str) -> None:
    """Write a line into the launch's log file only (under Hydra: <run dir>/<app>.log), e.g. the one-sentence
    error the console already shows on stderr, so that the folder itself says why the run failed. A launch
    that never owned its folder writes nothing there (:class:`LaunchLog`)."""
    record = logging.LogRecord("cpo", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, (logging.FileHandler, LaunchLog)):
            handler.handle(record)


class _LineProgress:
    """tqdm's ``update``/``close`` as one line every ``every`` seconds (and one at the end of long work)."""

    def __init__(self, total: int, desc: str, unit: str, every: float, write):
        self.total, self.desc, self.unit, self.every, self.write = total, desc, unit, every, write
        self.n = 0
        self.t0 = self.last = time.time()
        self.spoke = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.time()
        if now - self.last >= self.every:
            self.last, self.spoke = now, True
            self.write(self._line(now))

    def _line(self, now: float) -> str:
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = self.n / max(now - self.t0, 1e-9)
        return f"{self.desc}: {self.n}/{self.total}{pct}, {rate:.1f} {self.unit}/s"

    def close(self) -> None:
        if self.spoke:  # long enough to have reported: say that it ended
            self.write(self._line(time.time()))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: int, desc: str, unit: str = "it", enabled: bool = True, every: float = 30.0):
    """A progress display with tqdm's ``update(n)``/``close()``: a bar in a terminal, a line every ``every``
    seconds when the output goes to a file (no carriage returns), nothing when not ``enabled``."""
    if not enabled:
        return _NoProgress()
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit)
    write = log.info if _LOGGING else (lambda line: print(line, file=sys.stderr, flush=True))
    return _LineProgress(total, desc, unit, every, write)
