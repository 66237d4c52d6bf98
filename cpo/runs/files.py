"""Small file-system helpers of the run folder: temp files beside their target, fsync, processes, moving aside."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import BinaryIO, Iterator


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (one of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable; a no-op where directories cannot be opened (some network file systems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(target: Path) -> Path:
    """``.<name>.tmp-<pid>`` beside ``target``: on its file system (an atomic rename), its writer in its name."""
    return target.parent / f".{target.name}.tmp-{os.getpid()}"


def remove_stale_temps(target: Path) -> list[Path]:
    """Temp files of ``target`` left by processes that no longer run (a kill -9 mid-write); returns those removed."""
    removed = []
    for p in target.parent.glob(f".{target.name}.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write ``target`` through a temp file that is fsynced and renamed into place, or removed on any failure.

    The temp file is created with mode 0o666 and the umask applied, exactly as a plain ``open()``
    would create ``target`` (mkstemp would make it 0600, unreadable by colleagues on a shared folder).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(target.parent)


def timestamped_dir(parent: Path, prefix: str) -> Path:
    """A new, empty ``<parent>/<prefix>-YYYYmmdd-HHMMSS[-n]/`` (never one that already exists)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        d = parent / (f"{prefix}-{stamp}" if n == 1 else f"{prefix}-{stamp}-{n}")
        try:
            d.mkdir(parents=True)
            return d
        except FileExistsError:
            continue
    raise FileExistsError(f"{parent}: too many {prefix}-{stamp}* folders")


def move_into(parent: Path, names: list[str], dest: Path) -> list[str]:
    """Rename ``parent/<name>`` into ``dest/`` for each name that exists (a rename: nothing is copied or lost)."""
    moved = []
    for name in names:
        src = parent / name
        if src.exists() or src.is_symlink():
            os.replace(src, dest / name)
            moved.append(name)
    fsync_dir(parent)
    return moved
