"""Readers of parallel input (sources, optional references, a direction) for generation and preference building.

Three formats, one result (``ParallelData``):

- ``text``: one source per line in a UTF-8 file, with the references (optional) in a second,
  line-aligned file; the direction comes from the configuration (or, failing that, from a
  WMT/ALMA-style file name such as ``test.de-en.de``).
- ``jsonl``: the project's JSONL, one object per line with ``source`` and optional
  ``reference``, ``src_lang`` and ``tgt_lang`` (the demo's test files and the preference JSONL
  both qualify). A line holding ALMA's ``{"translation": {...}}`` record is read as below.
- ``alma_json``: ALMA's JSON list of ``{"translation": {"<src>": ..., "<tgt>": ...}}`` (the
  ``alma_human_written`` files). A record holds both languages, so the direction must be
  configured or read from a file name like ``test.cs-en.json``.

``auto`` decides by content, with the one rule of ``cpo.io.json_layout``: a ``.json`` or ``.jsonl``
file whose first character is ``[`` is alma_json (a JSON list), else jsonl; any other file is jsonl
when its first line is a JSON object with a ``source`` or ``translation`` field, else text.

Every error names the file and the line (for a JSON list, the line where the row starts) and the
field. Texts with nothing visible (whitespace, zero-width characters) count as empty; empty sources
and references are errors. A byte-order mark and duplicate JSON keys are handled by ``cpo.io``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cpo.io import DataError, check_readable_file, iter_json_list, iter_jsonl, json_layout, read_lines
from cpo.languages import LANGUAGES, language_name
from cpo.text import is_blank

__all__ = [
    "FORMATS",
    "ParallelData",
    "detect_format",
    "direction_from_filename",
    "read_parallel",
    "read_system_outputs",
]

FORMATS = ("auto", "text", "jsonl", "alma_json")
REFERENCE_MODES = ("optional", "required", "ignore")


@dataclass
class ParallelData:
    sources: list[str]
    references: list[str] | None
    src_lang: str
    tgt_lang: str
    path: Path
    format: str
    ref_path: Path | None = None

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def direction(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"


_DIRECTION_IN_NAME = re.compile(r"(?:^|[._])([a-z]{2,3})-([a-z]{2,3})(?:\.[a-z]{2,3})?\.(?:json|jsonl|txt|[a-z]{2,3})$")


def direction_from_filename(path: str | os.PathLike) -> tuple[str, str] | None:
    """``test.cs-en.json`` / ``test.de-en.de`` / ``valid.en-zh.jsonl`` -> (src, tgt); else None."""
    m = _DIRECTION_IN_NAME.search(Path(path).name)
    if not m or m.group(1) not in LANGUAGES or m.group(2) not in LANGUAGES:
        return None
    return m.group(1), m.group(2)


def setting_error(message: str) -> Exception:
    """A wrong setting (``cpo.cli.UsageError``), imported on the error path only: cpo.cli imports torch."""
    from cpo.cli import UsageError

    return UsageError(message)


def _first_nonblank_line(path: Path) -> bytes:
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                return raw.strip().removeprefix(b"\xef\xbb\xbf")
    return b""


def detect_format(path: str | os.PathLike) -> str:
    """The format of an input file (see the module docstring for the rules)."""
    path = check_readable_file(path)
    if path.suffix in (".json", ".jsonl"):
        return "alma_json" if json_layout(path) == "list" else "jsonl"
    first = _first_nonblank_line(path)
    if first.startswith(b"{"):
        try:
            obj = json.loads(first)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "text"
        if isinstance(obj, dict) and ("source" in obj or "translation" in obj):
            return "jsonl"
    return "text"


def _field(obj: dict, key: str, where: str, required: bool = True) -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise DataError(f"{where}: missing field {key!r}")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if is_blank(value):
        raise DataError(f"{where}: field {key!r} is empty")
    return value


def _direction(src_lang: str | None, tgt_lang: str | None, path: Path) -> tuple[str | None, str | None]:
    if (src_lang is None) != (tgt_lang is None):
        raise setting_error(f"{path}: give both src_lang and tgt_lang, or neither "
                            f"(got src_lang={src_lang!r}, tgt_lang={tgt_lang!r})")
    if src_lang is None:
        guess = direction_from_filename(path)
        if guess is not None:
            src_lang, tgt_lang = guess
    for key, code in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
        if code is not None and code not in LANGUAGES:
            try:
                language_name(code, key)
            except ValueError as e:
                raise setting_error(str(e)) from None
    return src_lang, tgt_lang


def _read_text(path: Path, src_lang, tgt_lang, ref, references: str) -> ParallelData:
    src_lang, tgt_lang = _direction(src_lang, tgt_lang, path)
    if src_lang is None:
        raise setting_error(f"{path}: a plain-text input needs src_lang= and tgt_lang= "
                            "(the file name does not say the direction)")
    sources = read_lines(path)
    for i, s in enumerate(sources, 1):
        if is_blank(s):
            raise DataError(f"{path}:{i}: empty source line")
    if not sources:
        raise DataError(f"{path}: no sources (the file is empty)")
    refs = None
    ref_path = None
    if ref is not None and references != "ignore":
        ref_path = check_readable_file(ref, "ref")
        refs = read_lines(ref_path)
        if len(refs) != len(sources):
            raise DataError(f"files are not aligned: source {path} has {len(sources)} lines, "
                            f"reference {ref_path} has {len(refs)} lines")
        for i, r in enumerate(refs, 1):
            if is_blank(r):
                raise DataError(f"{ref_path}:{i}: empty reference line")
    if refs is None and references == "required":
        raise setting_error(f"{path}: references are needed but none were given "
                            "(pass ref=<file aligned with the sources>)")
    return ParallelData(sources, refs, src_lang, tgt_lang, path, "text", ref_path)


def _translation_record(obj: dict, where: str, src_lang: str, tgt_lang: str, want_ref: bool) -> tuple[str, str | None]:
    tr = obj.get("translation")
    if not isinstance(tr, dict):
        raise DataError(f"{where}: field 'translation' must be an object like "
                        f"{{\"{src_lang}\": ..., \"{tgt_lang}\": ...}}")
    source = _field(tr, src_lang, f"{where}: translation")
    ref = _field(tr, tgt_lang, f"{where}: translation", required=False) if want_ref else None
    return source, ref


def _finish(path: Path, fmt: str, sources, refs, wheres, src_lang, tgt_lang, references: str) -> ParallelData:
    if not sources:
        raise DataError(f"{path}: no sources")
    if references == "ignore":
        return ParallelData(sources, None, src_lang, tgt_lang, path, fmt)
    have = [r is not None for r in refs]
    if all(have):
        return ParallelData(sources, list(refs), src_lang, tgt_lang, path, fmt)
    if references == "required" or any(have):
        missing = have.index(False)
        what = "needed" if references == "required" else "given for other rows"
        raise DataError(f"{wheres[missing]}: no reference (references are {what})")
    return ParallelData(sources, None, src_lang, tgt_lang, path, fmt)


def _read_jsonl(path: Path, src_lang, tgt_lang, references: str) -> ParallelData:
    src_lang, tgt_lang = _direction(src_lang, tgt_lang, path)
    want_ref = references != "ignore"
    sources, refs, wheres = [], [], []
    for i, obj in iter_jsonl(path):
        where = f"{path}:{i}"
        wheres.append(where)
        if "translation" in obj and "source" not in obj:
            if src_lang is None:
                raise setting_error(f"{where}: an ALMA 'translation' record holds both languages; "
                                    "give src_lang= and tgt_lang=")
            s, r = _translation_record(obj, where, src_lang, tgt_lang, want_ref)
        else:
            s = _field(obj, "source", where)
            r = _field(obj, "reference", where, required=False) if want_ref else None
            for key, expected in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
                got = obj.get(key)
                if got is None:
                    if expected is None:
                        raise DataError(f"{where}: missing field {key!r} (or give {key}= in the configuration)")
                    continue
                if not isinstance(got, str):
                    raise DataError(f"{where}: field {key!r} must be a string, got {type(got).__name__}")
                if expected is None:
                    try:
                        language_name(got, f"{where}: field {key!r}")
                    except ValueError as e:
                        raise DataError(str(e)) from None
                    if key == "src_lang":
                        src_lang = got
                    else:
                        tgt_lang = got
                elif got != expected:
                    raise DataError(
                        f"{where}: field {key!r} is {got!r} but the direction is {src_lang}-{tgt_lang} "
                        "(one file holds one direction; split it or fix the configuration)"
                    )
        sources.append(s)
        refs.append(r)
    return _finish(path, "jsonl", sources, refs, wheres, src_lang, tgt_lang, references)


def _read_alma_json(path: Path, src_lang, tgt_lang, references: str) -> ParallelData:
    src_lang, tgt_lang = _direction(src_lang, tgt_lang, path)
    if src_lang is None:
        raise setting_error(f"{path}: an ALMA JSON file holds both languages; give src_lang= and tgt_lang= "
                            "(or name it like test.de-en.json)")
    sources, refs, wheres = [], [], []
    for line, row, obj in iter_json_list(path):
        where = f"{path}:{line} (row {row})"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected an object, got {type(obj).__name__}")
        s, r = _translation_record(obj, where, src_lang, tgt_lang, references != "ignore")
        sources.append(s)
        refs.append(r)
        wheres.append(where)
    return _finish(path, "alma_json", sources, refs, wheres, src_lang, tgt_lang, references)


def read_parallel(
    path: str | os.PathLike,
    format: str = "auto",
    src_lang: str | None = None,
    tgt_lang: str | None = None,
    ref: str | os.PathLike | None = None,
    references: str = "optional",
    key: str | None = None,
) -> ParallelData:
    """Sources (and references) of one direction from a file in any of the supported formats.

    ``references``: ``optional`` (use them when present; present for some rows only is an
    error), ``required`` (missing ones are an error naming the first such line) or ``ignore``.
    ``ref`` is the reference file of a ``text`` input; the JSON formats carry their own. ``key`` names
    the setting that gave ``path`` in the messages about it (a missing file, a folder).
    """
    if format not in FORMATS:
        raise setting_error(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    if references not in REFERENCE_MODES:
        raise ValueError(f"references must be one of {', '.join(REFERENCE_MODES)}, got {references!r}")
    path = check_readable_file(path, key)
    fmt = detect_format(path) if format == "auto" else format
    if ref is not None and fmt != "text":
        raise setting_error(f"ref={ref} is only for plain-text input; {path} is {fmt} and carries its own references")
    if fmt == "text":
        return _read_text(path, src_lang, tgt_lang, ref, references)
    if fmt == "jsonl":
        return _read_jsonl(path, src_lang, tgt_lang, references)
    return _read_alma_json(path, src_lang, tgt_lang, references)


def read_system_outputs(data: ParallelData, systems: dict[str, str | os.PathLike]) -> dict[str, list[str]]:
    """Each named system's output file, line-aligned with ``data``; empty lines are kept as ''.

    Empty hypotheses are legitimate system output (real WMT'23 submissions have them): the caller
    scores and counts them. A count that differs from the input's stops with both files and both
    counts named; a line that is not UTF-8 stops with the file and line named.
    """
    out: dict[str, list[str]] = {}
    for name, p in systems.items():
        lines = read_lines(check_readable_file(p, f"systems.{name}"))
        if len(lines) != len(data):
            raise DataError(
                f"files are not aligned: system {name!r} {p} has {len(lines)} lines, "
                f"input {data.path} has {len(data)} {'lines' if data.format != 'alma_json' else 'rows'}"
            )
        out[name] = lines
    return out
