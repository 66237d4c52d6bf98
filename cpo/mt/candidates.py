"""Multi-candidate files: N translations per source, one JSON object per source (SPEC section 9).

``scripts/generate.py`` writes one when asked for more than one candidate per source (sampling, N
returned beams, or both), and ``scripts/build_preferences.py samples={name: file}`` reads it as one
system whose every candidate competes. A row::

    {"source": "...", "src_lang": "de", "tgt_lang": "en",
     "candidates": ["...", "...", ...],          # in order: beams by rank, then samples in drawing order
     "duplicate_of": [null, null, 0, ...],       # index of the first earlier candidate with the same text, or null
     "logprobs": [-3.2, -4.1, ...],              # optional: each candidate's summed log-prob under the generator
     "origins": ["beam", "beam", "sample", ...]} # optional: how each candidate was decoded

Rows are in the order of the input's sources. An empty candidate is legitimate output (kept as "",
counted by the readers); texts compare after whitespace normalisation (``cpo.text.normalize_space``), so
two samples that read the same are duplicates. Duplicates are kept, so that the row says what the
generator produced, and marked, so that pair building can leave them out.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from cpo.io import DataError, check_readable_file, iter_jsonl
from cpo.text import is_blank, normalize_space


def duplicate_marks(candidates: list[str]) -> list[int | None]:
    """For each candidate, the index of the first earlier one with the same normalised text, else None."""
    first: dict[str, int] = {}
    marks: list[int | None] = []
    for i, text in enumerate(candidates):
        key = normalize_space(text)
        marks.append(first.get(key))
        first.setdefault(key, i)
    return marks


def candidate_row(source: str, src_lang: str, tgt_lang: str, candidates: list[str],
                  logprobs: list[float] | None = None, origins: list[str] | None = None) -> dict:
    """One row of a multi-candidate file (duplicates marked here)."""
    row = {"source": source, "src_lang": src_lang, "tgt_lang": tgt_lang, "candidates": list(candidates),
           "duplicate_of": duplicate_marks(candidates)}
    if logprobs is not None:
        row["logprobs"] = [round(float(x), 6) for x in logprobs]
    if origins is not None:
        row["origins"] = list(origins)
    return row


@dataclass
class CandidateSet:
    """The rows of one multi-candidate file."""

    path: Path
    sources: list[str]
    candidates: list[list[str]]
    src_lang: str
    tgt_lang: str
    logprobs: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def n_candidates(self) -> int:
        return sum(len(c) for c in self.candidates)

    @property
    def n_empty(self) -> int:
        return sum(is_blank(t) for c in self.candidates for t in c)

    @property
    def n_duplicates(self) -> int:
        return sum(m is not None for c in self.candidates for m in duplicate_marks(c))


def _string_list(obj: dict, key: str, where: str) -> list[str]:
    value = obj.get(key)
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of strings (one per candidate)")
    for k, text in enumerate(value):
        if not isinstance(text, str):
            raise DataError(f"{where}: {key}[{k}] must be a string, got {type(text).__name__}")
    return value


def read_candidates(path: str | os.PathLike, key: str | None = None) -> CandidateSet:
    """A multi-candidate file (see the module docstring); every error names the file, line and field."""
    path = check_readable_file(path, key)
    sources, cands, logps, langs = [], [], [], set()
    has_logprobs = None
    for i, obj in iter_jsonl(path):
        where = f"{path}:{i}"
        source = obj.get("source")
        if not isinstance(source, str) or is_blank(source):
            raise DataError(f"{where}: field 'source' missing or empty (is this a multi-candidate file of "
                            "scripts/generate.py?)")
        texts = _string_list(obj, "candidates", where)
        for lang in ("src_lang", "tgt_lang"):
            if not isinstance(obj.get(lang), str):
                raise DataError(f"{where}: field {lang!r} missing or not a string")
        langs.add((obj["src_lang"], obj["tgt_lang"]))
        if len(langs) > 1:
            raise DataError(f"{where}: direction {obj['src_lang']}-{obj['tgt_lang']} differs from the earlier rows' "
                            "(one file holds one direction)")
        lp = obj.get("logprobs")
        if has_logprobs is None:
            has_logprobs = lp is not None
        if (lp is not None) != has_logprobs:
            raise DataError(f"{where}: 'logprobs' is given for some rows only")
        if lp is not None:
            if not isinstance(lp, list) or len(lp) != len(texts) or not all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in lp):
                raise DataError(f"{where}: 'logprobs' must list one finite number per candidate ({len(texts)})")
            logps.append([float(x) for x in lp])
        sources.append(source)
        cands.append(texts)
    if not sources:
        raise DataError(f"{path}: no rows")
    src, tgt = langs.pop()
    return CandidateSet(path, sources, cands, src, tgt, logps if has_logprobs else None)


def check_aligned(cs: CandidateSet, sources: list[str], src_lang: str, tgt_lang: str, what: str) -> None:
    """The file holds one row per source, in the same order and direction, or a DataError names the first
    row that differs (candidates of another input would otherwise be paired with the wrong sources)."""
    if (cs.src_lang, cs.tgt_lang) != (src_lang, tgt_lang):
        raise DataError(f"{what} {cs.path} is {cs.src_lang}-{cs.tgt_lang}, the input is {src_lang}-{tgt_lang}")
    if len(cs) != len(sources):
        raise DataError(f"files are not aligned: {what} {cs.path} has {len(cs)} rows, the input has "
                        f"{len(sources)} sources")
    for i, (a, b) in enumerate(zip(cs.sources, sources), 1):
        if normalize_space(a) != normalize_space(b):
            raise DataError(f"files are not aligned: {cs.path}:{i} is a candidate row for source {a[:60]!r}, "
                            f"but source {i} of the input is {b[:60]!r}")
