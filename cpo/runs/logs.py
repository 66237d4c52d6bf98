"""A metrics history that survives a resume: ``csv/metrics.csv`` continued, not deleted.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a new logger opens the folder
(``_ExperimentWriter._check_log_dir_exists``), so a resumed run loses every row logged before the
interruption and ``results.json``'s train/val sections come out empty (a resumed fit that has no step
left logs nothing). ``ResumableCSVLogger`` keeps the rows the checkpoint covers, drops the ones
logged after it (the resumed run logs them again), and rewrites the file atomically when a new
column appears.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from cpo.runs.files import atomic_file

log = logging.getLogger(__name__)


def _step(row: dict) -> int | None:
    try:
        value = float(row.get("step") or "")
    except ValueError:
        return None
    return int(value) if math.isfinite(value) else None


def read_metrics(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a metrics CSV; a last line cut short by a kill, and rows without a step, are left out."""
    text = Path(path).read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the append of the last row was interrupted
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = [r for r in reader if None not in r and _step(r) is not None]  # None key: more fields than the header
    return list(reader.fieldnames or []), rows


def write_metrics(path: str | os.PathLike, header: list[str], rows: list[dict[str, Any]]) -> None:
    """The whole file, atomically (a kill leaves the old file or the new one, never a mix)."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    with atomic_file(path) as f:
        f.write(buf.getvalue().encode("utf-8"))


def last_logged(path: str | os.PathLike, prefixes: tuple[str, ...] = ("train/", "val/")) -> dict[str, float]:
    """The last value logged for each metric whose name starts with one of ``prefixes``.

    For ``results.json`` after a resume: a resumed fit with no step left leaves
    ``trainer.callback_metrics`` empty, but the history holds the values of the interrupted run.
    """
    if not Path(path).is_file():
        return {}
    header, rows = read_metrics(path)
    out: dict[str, float] = {}
    for row in sorted(rows, key=_step):  # stable: rows of one step keep their logged order
        for key in header:
            if key.startswith(prefixes) and row.get(key) not in (None, ""):
                try:
                    out[key] = float(row[key])
                except ValueError:
                    pass
    return out


class ResumableExperimentWriter(ExperimentWriter):
    """Lightning's writer, but a resumed run continues ``metrics.csv`` and header rewrites are atomic."""

    def __init__(self, log_dir: str, resume_step: int | None = None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)  # calls _check_log_dir_exists below

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self.resume_step is None or not path.is_file():
            return super()._check_log_dir_exists()  # a fresh run: Lightning's behaviour (an old file is replaced)
        header, rows = read_metrics(path)
        kept = [r for r in rows if _step(r) <= self.resume_step]
        write_metrics(path, header, kept)  # always: also drops a last line cut short, which appends would extend
        log.info("%s: kept %d rows up to step %d, dropped %d logged after the checkpoint",
                 path, len(kept), self.resume_step, len(rows) - len(kept))
        self.metrics_keys = list(header)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        _, rows = read_metrics(self.metrics_file_path)
        write_metrics(self.metrics_file_path, fieldnames, rows)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger(save_dir, name="csv", version="")`` (same files, same columns) that a resumed run continues.

    ``resume_step``: None for a fresh run (an old ``metrics.csv`` is replaced, as Lightning does); for a
    resume, the ``step`` of the last row the checkpoint covers (``check_checkpoint(path)["log_step"]``):
    rows up to it are kept, later ones are dropped because the resumed run logs them again. Rows are
    also flushed whenever a checkpoint is saved, so a kill never loses a row the checkpoint covers.
    Lightning creates the writer on global rank 0 only.
    """

    def __init__(self, save_dir, resume_step: int | None = None, name: str = "csv", version: str = "", **kwargs):
        super().__init__(save_dir, name=name, version=version, **kwargs)
        self.resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumableExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumableExperimentWriter(self.log_dir, self.resume_step)
        return self._experiment

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        # Rows logged straight through log_metrics (callbacks, test/* metrics) are only buffered until save().
        if self._experiment is not None:
            self.save()
