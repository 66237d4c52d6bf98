"""The sources a rounds run translates: rows of a parallel JSONL, grouped by direction, sliced per round."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cpo.io import DataError, iter_jsonl, read_lines
from cpo.languages import LANGUAGES
from cpo.text import is_blank


@dataclass(frozen=True)
class SourceRow:
    index: int             # 0-based row of the input file (offline system files are aligned with it)
    source: str
    reference: str | None
    src_lang: str
    tgt_lang: str

    @property
    def direction(self) -> str:
        return f"{self.src_lang}-{self.tgt_lang}"


def read_rows(path: str, key: str) -> list[SourceRow]:
    """Every row of a parallel JSONL (source, optional reference, src_lang, tgt_lang); errors name file and line."""
    rows = []
    for line, obj in iter_jsonl(path):
        where = f"{path}:{line}"
        source = obj.get("source")
        if not isinstance(source, str) or is_blank(source):
            raise DataError(f"{where}: field 'source' missing or empty ({key} must be a parallel JSONL with source, "
                            "reference, src_lang, tgt_lang)")
        ref = obj.get("reference")
        if ref is not None and (not isinstance(ref, str) or is_blank(ref)):
            raise DataError(f"{where}: field 'reference' must be a non-empty string when present")
        langs = [obj.get(k) for k in ("src_lang", "tgt_lang")]
        for k, code in zip(("src_lang", "tgt_lang"), langs):
            if code not in LANGUAGES:
                raise DataError(f"{where}: field {k!r} missing or not a known language code ({code!r})")
        rows.append(SourceRow(len(rows), source, ref, *langs))
    if not rows:
        raise DataError(f"{path}: no rows ({key})")
    return rows


def round_slice(rows: list[SourceRow], per_round: int | None, round_: int) -> list[SourceRow]:
    """Round ``round_`` (1-based) takes the whole list, or its ``per_round``-row slice number ``round_`` (wrapping
    around the end), so that successive rounds see fresh sources while there are any."""
    if not per_round or per_round >= len(rows):
        return list(rows)
    start = ((round_ - 1) * per_round) % len(rows)
    return [rows[(start + i) % len(rows)] for i in range(per_round)]


def by_direction(rows: list[SourceRow]) -> dict[str, list[SourceRow]]:
    out: dict[str, list[SourceRow]] = {}
    for r in rows:
        out.setdefault(r.direction, []).append(r)
    return out


def rows_digest(rows: list[SourceRow]) -> str:
    """sha256 of the rows' texts and directions: what a stage read, for its fingerprint."""
    payload = json.dumps([[r.index, r.source, r.reference, r.src_lang, r.tgt_lang] for r in rows], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def system_texts(path: str, rows_in_file: int, key: str) -> list[str]:
    """An offline system's outputs, one line per row of the split's input file (empty lines are outputs)."""
    lines = read_lines(path)
    if len(lines) != rows_in_file:
        raise DataError(f"files are not aligned: {key} {path} has {len(lines)} lines, its input has "
                        f"{rows_in_file} rows")
    return lines
