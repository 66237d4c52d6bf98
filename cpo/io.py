"""File helpers shared by every entry point: atomic writes and validated reads.

Outputs are written to a temporary file in the same folder and renamed into place, so an
interrupted run never leaves a half-written file where a finished one is expected.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


class DataError(ValueError):
    """Bad input data; the message names the file, the line and the field."""


class Unavailable(RuntimeError):
    """A model or data set named by the config cannot be loaded here (e.g. no hub access)."""


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def check_writable(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to replace an existing output unless the user said overwrite=true."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")
    return path


def read_lines(path: str | os.PathLike, allow_empty: bool = True) -> list[str]:
    """Lines of a UTF-8 text file without their newline; a bad byte or an empty line is named by line number."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    raw = path.read_bytes()
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
        if not allow_empty and not s.strip():
            raise DataError(f"{path}:{i}: empty line")
        out.append(s)
    return out


def read_aligned(paths: dict[str, str | os.PathLike], allow_empty: bool = False) -> dict[str, list[str]]:
    """Read several line-aligned files; differing line counts stop with every file's count named."""
    texts = {name: read_lines(p, allow_empty=allow_empty) for name, p in paths.items()}
    counts = {name: len(t) for name, t in texts.items()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{name}={paths[name]} ({n} lines)" for name, n in counts.items())
        raise DataError(f"files are not aligned: {detail}")
    return texts


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL file; malformed lines are named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        for i, b in enumerate(f, 1):
            try:
                line = b.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{i}: not valid UTF-8 ({e.reason})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
            yield i, obj


def report_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """Where the Markdown and JSON reports of a JSONL output go: beside it, same stem."""
    output = Path(output)
    return output.parent / f"{output.stem}.report.md", output.parent / f"{output.stem}.report.json"


def write_jsonl_with_report(output: str | os.PathLike, rows: Iterable[dict], report: dict, markdown: str, overwrite: bool) -> None:
    """The JSONL and its two reports, each atomic; re-checked first, since another run may have written them meanwhile."""
    md_path, json_path = report_paths(output)
    for p in (output, md_path, json_path):
        check_writable(p, overwrite)
    atomic_write_jsonl(output, rows)
    atomic_write_json(json_path, report)
    atomic_write_text(md_path, markdown)
