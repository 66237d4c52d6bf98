"""File helpers shared by every entry point: atomic writes and validated reads.

Outputs are written to a temporary file in the same folder and renamed into place, so an
interrupted run never leaves a half-written file where a finished one is expected. They get the
permissions a plain ``open()`` would give (0666 minus the umask, or the mode of the file they
replace), so colleagues sharing a folder can read them. Files the libraries write their own way
(safetensors through a private 0600 temporary file, W&B's read-only staging copies, ``mkdtemp``'s
0700 folders) are brought to the same rule by :func:`normalize_permissions` once an output tree is finished.

Readers name the file and line of every problem. A UTF-8 byte-order mark at the start of a file is
removed with a warning (left in, it becomes part of the first text and changes its scores), and a
JSON object that names a key twice is an error (a JSON reader would silently keep the last value).
"""
from __future__ import annotations

import json
import logging
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from cpo.text import is_blank

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the field."""


class Unavailable(RuntimeError):
    """A model or data set named by the config cannot be loaded here (e.g. no hub access)."""


# --------------------------------------------------------------------------- writing
def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask(0) would race other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """What open(path, "w") would leave: the existing file's mode, else 0666 minus the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def normalize_permissions(root: str | os.PathLike) -> int:
    """Give every file and folder under ``root`` (itself included) at least the permissions a plain ``open()`` /
    ``mkdir()`` would have given under this umask; returns how many were changed.

    Only bits are added, and only those the umask lets through: read (and, for folders, search) for group and
    others; write for them only where the owner may write and the umask allows it (a 002 umask's shared group);
    execute on files only where the owner has it. A stricter umask (077) adds nothing, and a file someone made
    more open keeps its mode. Symbolic links are not followed, and entries of other users are left alone.
    """
    allowed = 0o777 & ~current_umask()
    changed = 0
    root = Path(root)

    def fix(path: Path, is_dir: bool) -> None:
        nonlocal changed
        try:
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid():
                return
            mode = stat.S_IMODE(st.st_mode)
            owner_w, owner_x = mode & stat.S_IWUSR, mode & stat.S_IXUSR
            extra = 0o044 | (0o011 if is_dir or owner_x else 0) | (0o022 if owner_w else 0)
            new = mode | (allowed & extra)
            if new != mode:
                os.chmod(path, new)
                changed += 1
        except FileNotFoundError:  # removed meanwhile (a temp file renamed into place)
            pass
        except PermissionError:
            pass

    if not root.exists():
        return 0
    fix(root, root.is_dir())
    if root.is_dir() and not root.is_symlink():
        for folder, dirs, files in os.walk(root):
            for d in dirs:
                fix(Path(folder) / d, True)
            for f in files:
                fix(Path(folder) / f, False)
    return changed


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 whatever the umask: results on a shared folder would be unreadable to others.
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_lines(path: str | os.PathLike, lines: Iterable[str]) -> Path:
    lines = list(lines)
    for i, line in enumerate(lines, 1):
        if "\n" in line:
            raise ValueError(f"{path}: line {i} to be written contains a newline")
    return atomic_write_text(path, "".join(line + "\n" for line in lines))


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def check_writable(path: str | os.PathLike, overwrite: bool, key: str | None = None) -> Path:
    """Refuse an output that cannot be written, before any work is spent on it.

    The path must not be a folder, must not exist unless ``overwrite``, and its nearest existing
    parent must be a folder this process may write into (missing folders are created on writing).
    ``key`` (e.g. ``"output"``) names the setting in the message.
    """
    path = Path(path)
    label = f"{key}={path}: " if key else f"{path}: "
    if path.is_dir():
        raise IsADirectoryError(f"{label}is a directory; give the path of a file to write")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{label}exists; pass overwrite=true to replace it")
    parent = path.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link: mkdir would fail on it
            raise NotADirectoryError(f"{label}cannot create the folder {parent}: it is a broken symbolic link")
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{label}cannot create the folder {path.parent}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{label}cannot write into {parent} (permission denied); choose another folder")
    return path


# --------------------------------------------------------------------------- reading
def check_readable_file(path: str | os.PathLike, key: str | None = None) -> Path:
    """A path that must be an existing file: a folder or a missing path is named as what it is."""
    path = Path(path)
    label = f"{key}={path}" if key else str(path)
    if path.is_dir():
        raise IsADirectoryError(f"{label}: is a directory, not a file")
    if not path.is_file():
        if path.is_symlink():
            raise FileNotFoundError(f"{label}: a broken symbolic link (its target does not exist)")
        raise FileNotFoundError(f"{label}: no such file")
    return path


def _strip_bom(path: Path, data: bytes) -> bytes:
    if data.startswith(BOM):
        log.warning("%s: removed a UTF-8 byte-order mark at the start of the file", path)
        return data[len(BOM):]
    return data


def read_lines(path: str | os.PathLike, allow_empty: bool = True) -> list[str]:
    """Lines of a UTF-8 text file without their newline; a bad byte or an empty line is named by line number.

    A line with nothing visible (whitespace and zero-width characters only) counts as empty.
    """
    path = check_readable_file(path)
    raw = _strip_bom(path, path.read_bytes())
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for i, b in enumerate(lines, 1):
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{i}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
        s = s.rstrip("\r")
        if not allow_empty and is_blank(s):
            raise DataError(f"{path}:{i}: empty line")
        out.append(s)
    return out


def read_aligned(paths: dict[str, str | os.PathLike], allow_empty: bool = False,
                 limit: int | None = None) -> dict[str, list[str]]:
    """Read several line-aligned files (with ``limit``, their first lines only); differing line counts stop with
    every file's count named."""
    texts = {name: read_lines(p, allow_empty=allow_empty)[:limit] for name, p in paths.items()}
    counts = {name: len(t) for name, t in texts.items()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{name}={paths[name]} ({n} lines)" for name, n in counts.items())
        within = f" within their first {limit} lines (max_sentences)" if limit is not None else ""
        raise DataError(f"files are not aligned{within}: {detail}")
    return texts


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class _LoneSurrogate(ValueError):
    def __init__(self, key: str, char: str):
        super().__init__(key)
        self.key, self.char = key, char


# Half of a UTF-16 pair: JSON's "\ud83d" escape decodes to it, but it is not a character, and the first
# tokenizer or writer that encodes the text as UTF-8 fails on it.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate_in(value: Any) -> str | None:
    if isinstance(value, str):
        m = _SURROGATE.search(value)
        return m.group() if m else None
    if isinstance(value, list):  # objects inside are checked by their own hook
        for v in value:
            found = _surrogate_in(v)
            if found:
                return found
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    for k, v in pairs:
        char = _surrogate_in(v) or _surrogate_in(k)
        if char:
            raise _LoneSurrogate(k, char)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def _duplicate(where: str, e: _DuplicateKey) -> DataError:
    return DataError(f"{where}: the key {e.key!r} appears twice in one object (a JSON reader keeps only "
                     "the last value); remove one of them")


def _surrogate(where: str, e: _LoneSurrogate) -> DataError:
    char = e.char.encode("unicode_escape").decode()
    return DataError(f"{where}: field {e.key!r} holds a lone UTF-16 surrogate ({char}), half of a character (a text "
                     "cut inside an emoji or a rare character?); fix or remove it")


def parse_json_line(text: str, where: str) -> Any:
    """One JSON value; malformed JSON and duplicate keys are errors naming ``where``."""
    try:
        return _DECODER.decode(text)
    except _DuplicateKey as e:
        raise _duplicate(where, e) from None
    except _LoneSurrogate as e:
        raise _surrogate(where, e) from None
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; malformed lines are named."""
    path = check_readable_file(path)
    with open(path, "rb") as f:
        for i, b in enumerate(f, 1):
            if i == 1:
                b = _strip_bom(path, b)
            try:
                line = b.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{i}: not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            obj = parse_json_line(line, f"{path}:{i}")
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
            yield i, obj


_SPACE = re.compile(r"[ \t\n\r]*")


def json_layout(path: str | os.PathLike) -> str:
    """``"list"`` when the file's first non-blank character is ``[`` (one JSON list), else ``"lines"`` (JSON Lines).

    The one rule every reader of JSON data uses, whatever the file's suffix: a ``.json`` file from
    the hub is often JSON Lines, and a JSON Lines line always starts with ``{``.
    """
    path = check_readable_file(path)
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    return "list" if head.removeprefix(BOM).lstrip().startswith(b"[") else "lines"


def iter_json_list(path: str | os.PathLike) -> Iterator[tuple[int, int, Any]]:
    """(line, row number, value) for each element of a file holding one JSON list.

    Elements are decoded one at a time, so an error names the line where its row starts.
    """
    path = check_readable_file(path)
    data = _strip_bom(path, path.read_bytes())
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
    pos = _SPACE.match(text).end()
    if not text.startswith("[", pos):
        raise DataError(f"{path}:{text.count(chr(10), 0, pos) + 1}: expected a JSON list starting with '['")
    line, counted = 1, 0

    def line_at(p: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, p)
        counted = p
        return line

    pos = _SPACE.match(text, pos + 1).end()
    row = 0
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            row += 1
            start = line_at(pos)
            where = f"{path}:{start} (row {row})"
            try:
                value, pos = _DECODER.raw_decode(text, pos)
            except _DuplicateKey as e:
                raise _duplicate(where, e) from None
            except _LoneSurrogate as e:
                raise _surrogate(where, e) from None
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            yield start, row, value
            pos = _SPACE.match(text, pos).end()
            if text.startswith(",", pos):
                pos = _SPACE.match(text, pos + 1).end()
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            raise DataError(f"{path}:{line_at(pos)}: malformed JSON (expected ',' or ']' after row {row})")
    pos = _SPACE.match(text, pos).end()
    if pos != len(text):
        raise DataError(f"{path}:{line_at(pos)}: malformed JSON (text after the closing ']')")


def iter_json_records(path: str | os.PathLike) -> Iterator[tuple[str, Any]]:
    """(where, value) for each record of a JSON list or JSON Lines file (:func:`json_layout` decides).

    ``where`` is ``file:line`` (``file:line (row n)`` in a list), for messages about the record.
    """
    path = Path(path)
    if json_layout(path) == "list":
        for line, row, value in iter_json_list(path):
            yield f"{path}:{line} (row {row})", value
    else:
        for line, obj in iter_jsonl(path):
            yield f"{path}:{line}", obj


# --------------------------------------------------------------------------- JSONL outputs with reports
def report_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """Where the Markdown and JSON reports of a JSONL output go: beside it, same stem."""
    output = Path(output)
    return output.parent / f"{output.stem}.report.md", output.parent / f"{output.stem}.report.json"


def check_outputs_with_report(output: str | os.PathLike, overwrite: bool, key: str = "output") -> None:
    """:func:`check_writable` for a JSONL output and its two reports."""
    check_writable(output, overwrite, key)
    for p in report_paths(output):
        check_writable(p, overwrite)


def write_jsonl_with_report(
    output: str | os.PathLike, rows: Iterable[dict], report: dict, markdown: str, overwrite: bool
) -> None:
    """The JSONL and its two reports, each atomic; re-checked first, since another run may have written
    them meanwhile."""
    check_outputs_with_report(output, overwrite)
    md_path, json_path = report_paths(output)
    atomic_write_jsonl(output, rows)
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, markdown)
