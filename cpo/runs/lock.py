"""One writer per run folder: an exclusive ``flock`` on ``<out_dir>/.run.lock`` with the holder's pid, host and time."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from cpo.runs.errors import FolderBusy
from cpo.runs.files import pid_alive

log = logging.getLogger("cpo.runs.folder")  # one logger for everything a run does with its folder

LOCK_NAME = ".run.lock"
# Held for milliseconds around every lock operation, so that taking over a stale lock (a new lock file)
# can never race with another process opening the old one. Never removed.
GUARD_NAME = ".run.lock.guard"
# flock errors of file systems without locks (some NFS set-ups, Lustre without -o flock).
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
NEW_FOLDER = "give this run another folder (hydra.run.dir=..., or hydra.sweep.dir=... for a sweep)"


def _holder_text(holder: dict | None) -> str:
    if not holder:
        return "its pid and host are not recorded"
    since = str(holder.get("since", "?"))
    if since.startswith(time.strftime("%Y-%m-%d ")):
        since = since.split(" ", 1)[1]
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} since {since}"


class FolderLock:
    """The exclusive lock of a run folder, for global rank 0 of a run only.

    ``acquire()`` takes an exclusive ``flock`` on ``<out_dir>/.run.lock`` and writes pid, host and start
    time into it; another live holder gives ``FolderBusy``. The kernel releases a flock when its process
    dies, however it dies, so a free lock left with a holder's record is taken over (one log line); so is
    a lock still held under the record of a pid that no longer runs on this host (a child that inherited
    the descriptor outlived it). A clean ``release()`` removes the file. On a file system without locks,
    a warning is logged and the run goes on unlocked.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir)
        self._fd: int | None = None

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_NAME

    @contextlib.contextmanager
    def _guard(self, timeout: float = 10.0):
        fd = os.open(self.path / GUARD_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise FolderBusy(f"{self.path} is being locked by another process that has held "
                                         f"{GUARD_NAME} for {timeout:.0f} s: wait for it, or {NEW_FOLDER}") from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the guard

    def acquire(self) -> "FolderLock":
        if self._fd is not None:
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            with self._guard():
                self._fd = self._lock()
        except OSError as e:
            if e.errno not in _NO_LOCKS:
                raise
            log.warning("%s: the file system does not support locks (%s), so a second run started into this "
                        "folder would not be stopped", self.path, e.strerror)
        return self

    def _lock(self) -> int:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            previous = self._read_holder(fd)
            if previous:  # a clean release removes the file: a record means its holder died
                log.warning("%s: took over the lock left by %s, which no longer runs",
                            self.path, _holder_text(previous))
        except BlockingIOError:
            holder = self._read_holder(fd)
            os.close(fd)
            if not self._stale(holder):
                if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                    raise FolderBusy(f"{self.path} is in use by an earlier run in this same process "
                                     f"(pid {os.getpid()}) that did not release it: release it first, "
                                     f"or {NEW_FOLDER}") from None
                raise FolderBusy(f"{self.path} is in use by another run ({_holder_text(holder)}): wait for it, "
                                 f"or {NEW_FOLDER}") from None
            # The recorded holder is dead but a descendant still holds the old file: a new file, which we lock.
            self.lock_path.unlink()
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            log.warning("%s: took over the lock of %s, which no longer runs (a leftover child process still held it)",
                        self.path, _holder_text(holder))
        except BaseException:
            os.close(fd)
            raise
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        return fd

    @staticmethod
    def _read_holder(fd: int) -> dict | None:
        try:
            data = os.pread(fd, 4096, 0)
            holder = json.loads(data) if data.strip() else None
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    @staticmethod
    def _stale(holder: dict | None) -> bool:
        if not holder or holder.get("host") != socket.gethostname():
            return False  # a pid on another host cannot be checked from here
        pid = holder.get("pid")
        return isinstance(pid, int) and pid != os.getpid() and not pid_alive(pid)

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            with self._guard():
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino:
                        self.lock_path.unlink()  # a clean exit leaves no record behind
        finally:
            os.close(fd)

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
