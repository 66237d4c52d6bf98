"""Scores kept on disk: an interrupted or repeated scoring run only scores what it has never scored.

Scoring XXL models is the expensive step of building preference data, so ``CachedScorer`` keeps
every score, keyed by the scorer's identity and the exact texts. A cached score is used only when
the identity that produced it is the scorer's own (a changed model, comet version or hub revision
is a miss), only when the line still holds what was written (each line carries the scorer's identity
and a checksum over identity, text hash and score: a line edited by hand, damaged or copied from another
scorer's file is named in a warning and scored again), and only when it is a finite number (a NaN in
the file is an error naming the line).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path

from cpo.io import DataError
from cpo.scoring.base import Scorer, ScoreError

log = logging.getLogger(__name__)

#: Version of the file layout; 3 = each line carries the identity's hash and a checksum; 2 = keys bound to the
#: identity (its lines carry no check and are scored again); version 1 keyed texts only.
CACHE_FORMAT = 3


def _safe_filename(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "scorer"


class CachedScorer(Scorer):
    """On-disk cache around a scorer: only texts never scored before reach the model.

    One append-only JSONL file per scorer identity (``<name>-<sha256(identity)[:16]>.jsonl``),
    a header line ``{"identity": ..., "format": 3}``, then ``{"k": key, "s": score, "id": ..., "c": ...}``
    lines. The key is the sha256 of the identity and the exact source, hypothesis, reference (only if
    the scorer uses references) and target language (only if the scorer depends on it): a line written
    for another identity can never be a hit, even in a file copied or renamed by hand. ``id`` is the
    identity's hash and ``c`` a checksum of identity, key and score (:meth:`check`): a line whose ``id`` is
    not this scorer's, or whose checksum does not match (a score edited by hand, a damaged line, a line
    of an older format without one), is not used; a warning names the file, the line and why.

    Misses are scored in chunks of ``chunk_size`` and each chunk is appended and fsync'ed before
    the next, so a killed build loses at most one chunk; a truncated last line is ignored on load
    and cut off before the next append. Appends hold an exclusive ``flock`` so concurrent writers
    do not interleave. ``progress`` shows this cache's bar and the wrapped model's own
    (``None``: keep the wrapped scorer's setting, and show this bar).
    """

    def __init__(self, scorer: Scorer, cache_dir: str | os.PathLike, chunk_size: int = 512,
                 progress: bool | None = None) -> None:
        if isinstance(scorer, CachedScorer):
            raise TypeError("CachedScorer: the scorer is already cached")
        if chunk_size < 1:
            raise ValueError(f"CachedScorer: chunk_size must be >= 1, got {chunk_size}")
        self.scorer = scorer
        self.cache_dir = Path(cache_dir)
        self.chunk_size = int(chunk_size)
        self._progress = True
        if progress is not None:
            self.progress = progress
        self._table: dict[str, float] | None = None
        self._identity: str | None = None
        self._identity_hash: str | None = None
        self.hits = 0
        self.misses = 0

    # The wrapped scorer's nature, unchanged.
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.scorer.name

    @property
    def identity(self) -> str:
        if self._identity is None:
            self._identity = self.scorer.identity
        return self._identity

    @property
    def requires_reference(self) -> bool:  # type: ignore[override]
        return self.scorer.requires_reference

    @property
    def uses_reference(self) -> bool:  # type: ignore[override]
        return self.scorer.uses_reference

    @property
    def uses_tgt_lang(self) -> bool:  # type: ignore[override]
        return self.scorer.uses_tgt_lang

    @property
    def progress(self) -> bool:
        return self._progress

    @progress.setter
    def progress(self, on: bool) -> None:
        # Passed on, so that progress=false also silences the model's own bar (COMET's predict).
        self._progress = bool(on)
        self.scorer.set_progress(on)

    def set_progress(self, on: bool) -> None:
        self.progress = on

    @property
    def path(self) -> Path:
        return self.cache_dir / f"{_safe_filename(self.name)}-{self.identity_hash}.jsonl"

    @property
    def identity_hash(self) -> str:
        """The identity's short hash: the cache file's name and every line's ``id`` (computed once)."""
        if self._identity_hash is None:
            self._identity_hash = hashlib.sha256(self.identity.encode("utf-8")).hexdigest()[:16]
        return self._identity_hash

    def check(self, key: str, score: float) -> str:
        """The checksum of a line: binds the score to the identity and the texts' key (``repr`` of the float,
        which JSON writes and reads back exactly)."""
        payload = json.dumps([self.identity, key, repr(float(score))], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def key(self, source: str, hypothesis: str, reference: str | None, tgt_lang: str | None) -> str:
        """sha256 of the identity and the texts that can change the score (JSON-encoded, so no separator clashes)."""
        ref = reference if self.uses_reference else None
        lang = tgt_lang if self.uses_tgt_lang else None
        payload = json.dumps([self.identity, source, hypothesis, ref, lang], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    # -- file ---------------------------------------------------------------------------
    def _load(self) -> dict[str, float]:
        if self._table is not None:
            return self._table
        table: dict[str, float] = {}
        path = self.path
        unchecked: list[int] = []  # lines without a checksum (an older format): scored again
        if path.is_file():
            data = path.read_bytes()
            lines = data.split(b"\n")
            # The last element is b"" after a final newline, else a line cut by a kill: ignore it.
            for i, raw in enumerate(lines[:-1], 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    log.warning("%s:%d: unreadable cache line skipped", path, i)
                    continue
                if not isinstance(row, dict):
                    log.warning("%s:%d: malformed cache entry skipped", path, i)
                elif "identity" in row:
                    if row["identity"] != self.identity:
                        # Its entries are keyed by that identity, so none of them can be a hit here.
                        log.warning("%s:%d: written for scorer %r, not %r; its entries are not used",
                                    path, i, row["identity"], self.identity)
                elif "c" not in row:
                    unchecked.append(i)
                else:
                    self._read_entry(table, row, path, i)
        if unchecked:
            log.warning("%s: %d cache line(s) without a checksum (lines %s%s; written by an older cpo or by hand) are "
                        "not used; their segments are scored again", path, len(unchecked),
                        ", ".join(map(str, unchecked[:5])), " ..." if len(unchecked) > 5 else "")
        self._table = table
        return table

    def _read_entry(self, table: dict[str, float], row: dict, path: Path, line: int) -> None:
        k, s, ident, check = row.get("k"), row.get("s"), row.get("id"), row.get("c")
        if (not isinstance(k, str) or isinstance(s, bool) or not isinstance(s, (int, float))
                or not isinstance(ident, str) or not isinstance(check, str)):
            log.warning("%s:%d: malformed cache entry skipped", path, line)
            return
        if ident != self.identity_hash:
            log.warning("%s:%d: an entry of another scorer (identity hash %s, not %s: copied from another cache "
                        "file?) is not used", path, line, ident, self.identity_hash)
            return
        if check != self.check(k, s):
            log.warning("%s:%d: the entry does not match its checksum (edited by hand or damaged); its segment is "
                        "scored again", path, line)
            return
        if not math.isfinite(s):
            raise DataError(
                f"{path}:{line}: the cached score {s} of scorer {self.name!r} ({self.identity}) is not a finite "
                "number; delete this line (or the whole file) to score the segment again"
            )
        table[k] = float(s)

    @staticmethod
    def _cut_partial_line(f) -> None:
        """Drop a last line without newline (a write cut by a kill) so appends start clean."""
        size = f.seek(0, os.SEEK_END)
        if not size:
            return
        window = min(size, 1 << 16)
        f.seek(size - window)
        tail = f.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n")
        if cut >= 0:
            f.truncate(size - window + cut + 1)
        elif window == size:
            f.truncate(0)  # the whole file is one partial line
        else:
            f.write(b"\n")  # a partial line longer than the window: end it; load skips it

    def _append(self, rows: list[tuple[str, float]]) -> None:
        """Append one chunk durably; cut a partial last line left by an earlier kill first."""
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                self._cut_partial_line(f)
                if f.seek(0, os.SEEK_END) == 0:
                    header = {"identity": self.identity, "format": CACHE_FORMAT}
                    f.write((json.dumps(header, ensure_ascii=False) + "\n").encode())
                ident = self.identity_hash
                f.write("".join(json.dumps({"k": k, "s": s, "id": ident, "c": self.check(k, s)}) + "\n"
                                for k, s in rows).encode())
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- scoring ------------------------------------------------------------------------
    def _score(self, sources, hypotheses, references, tgt_lang):
        table = self._load()
        refs = references if references is not None else [None] * len(hypotheses)
        keys = [self.key(s, h, r, tgt_lang) for s, h, r in zip(sources, hypotheses, refs)]
        todo: dict[str, int] = {}  # key -> first index needing it (duplicates scored once)
        for i, k in enumerate(keys):
            if k not in table and k not in todo:
                todo[k] = i
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if todo:
            self._fill(table, list(todo.items()), sources, hypotheses, references, tgt_lang)
        return [table[k] for k in keys]

    def _fill(self, table, todo, sources, hypotheses, references, tgt_lang) -> None:
        from cpo.console import progress

        bar = progress(len(todo), f"scoring {self.name}", "seg", enabled=self.progress)
        try:
            for start in range(0, len(todo), self.chunk_size):
                chunk = todo[start : start + self.chunk_size]
                idx = [i for _, i in chunk]
                try:
                    scores = self.scorer.score(
                        [sources[i] for i in idx],
                        [hypotheses[i] for i in idx],
                        None if references is None else [references[i] for i in idx],
                        tgt_lang,
                    )
                except ScoreError as e:  # name the segment of the caller's list, not of the chunk
                    raise e.located(index=idx[e.index]) from None
                rows = [(k, s) for (k, _), s in zip(chunk, scores)]
                self._append(rows)
                table.update(rows)
                bar.update(len(chunk))
        finally:
            bar.close()
