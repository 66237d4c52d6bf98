"""Reading a sweep: one :class:`JobResult` per job folder of ``python train.py -m ...``.

A job folder holds ``run.json`` (the run's own record: its identity and the command line's overrides, written
when the run started), ``results.json`` (absent when the job failed), ``test_translations.jsonl`` (one row per
test sentence after training; older jobs have only ``test_hypotheses.txt``), ``csv/metrics.csv`` (the training
curves) and Hydra's ``.hydra/overrides.yaml``. A job is labelled by its own record: ``run.json`` of the run that
wrote ``results.json`` (the same fingerprint). Hydra's file is read only for older jobs, and only where it agrees
with the configuration stored in ``results.json`` (a refused launch used to rewrite it).

A job's *configuration* (its grid point) is its overrides less ``seed`` and the keys that do not
change the experiment (:data:`IGNORED_KEYS`); the seeds of a configuration are aggregated.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cpo.report.metrics import number

# Override keys that do not change the experiment (a key matches itself and everything under it).
IGNORED_KEYS: tuple[str, ...] = (
    "seed", "trainer.val_check_interval", "trainer.limit_val_batches", "trainer.enable_progress_bar",
    "evaluate", "logger", "cache_dir", "hydra", "save_policy", "experiment_name", "resume", "rerun", "ckpt_path",
    "launcher", "push_to_hub", "push_private",
)
TRANSLATIONS_FILE = "test_translations.jsonl"


@dataclass
class JobResult:
    """One job of a sweep (or one W&B run)."""

    name: str                                   # folder name (or W&B run name)
    overrides: dict[str, str]                   # every override of the job, key -> value as written
    seed: int | None
    results: dict | None                        # results.json; None when the job failed
    curve: pd.DataFrame | None = None           # step + train/* val/* columns (NaN where not logged)
    path: str | None = None                     # job folder or W&B run path
    error: str | None = None                    # why the job counts as failed
    label: str = ""                             # configuration label (set by assign_labels)
    config_overrides: dict[str, str] = field(default_factory=dict)  # overrides that define the configuration
    translations: list[dict] | None = None      # test_translations.jsonl rows, None when absent or unreadable
    translations_note: str = ""                 # why there are no translations (shown in the report)

    @property
    def ok(self) -> bool:
        return self.results is not None

    @property
    def loss(self) -> str | None:
        """The loss name: the ``loss`` override, else results' loss, else the resolved config's."""
        if self.overrides.get("loss"):
            return self.overrides["loss"]
        r = self.results or {}
        cfg_loss = (r.get("config") or {}).get("loss")
        return r.get("loss") or (cfg_loss.get("name") if isinstance(cfg_loss, Mapping) else None)


def is_ignored(key: str, ignored: Iterable[str] = IGNORED_KEYS) -> bool:
    key = key.lstrip("+~")
    return any(key == k or key.startswith(k + ".") for k in ignored)


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """["loss=cpo", "+x.y=1"] -> {"loss": "cpo", "x.y": "1"}; a bare "~key" deletion maps to ""."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        out[key.strip().lstrip("+~")] = value.strip() if sep else ""
    return out


def as_seed(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _job_num(path: Path) -> tuple[int, str]:
    m = re.match(r"(\d+)_", path.name)
    return (int(m.group(1)) if m else 1 << 30, path.name)


def clean_curve(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["step"] + [c for c in df.columns if c.startswith(("train/", "val/", "test/"))]
    df = df[cols].copy()
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.dropna(subset=["step"]).reset_index(drop=True)


def history_to_curve(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """W&B history rows -> the shape of the CSV curve (step = trainer/global_step, else _step)."""
    out = []
    for row in rows:
        step = row.get("trainer/global_step", row.get("_step"))
        if step is None:
            continue
        rec: dict[str, Any] = {"step": step}
        for k, v in row.items():
            if k.startswith(("train/", "val/", "test/")) and "/samples/" not in k and number(v) is not None:
                rec[k] = float(v)  # ("val/samples/*": a W&B table's bookkeeping, not a metric)
        if len(rec) > 1:
            out.append(rec)
    if not out:
        return pd.DataFrame({"step": pd.Series(dtype=float)})
    return clean_curve(pd.DataFrame.from_records(out))


def read_curve(job_dir: Path) -> pd.DataFrame | None:
    """The job's logged metrics (Lightning CSVLogger), else its offline W&B history, else None."""
    csv = job_dir / "csv" / "metrics.csv"
    if csv.is_file():
        try:
            df = pd.read_csv(csv)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
            df = None
        if df is not None and "step" in df.columns:
            return clean_curve(df)
    runs = sorted((job_dir / "wandb_files" / "wandb").glob("offline-run-*"))
    if runs:
        try:
            from cpo.report.wandb_offline import read_offline_run

            return history_to_curve(read_offline_run(runs[-1])["history"])
        except Exception:  # a curve is a nice-to-have: a damaged W&B file must not stop the report
            return None
    return None


def read_translations(job_dir: Path) -> tuple[list[dict] | None, str]:
    """(rows of test_translations.jsonl, "") or (None, why not): absent (older training code) or unreadable."""
    from cpo.io import DataError, iter_jsonl

    path = job_dir / TRANSLATIONS_FILE
    if not path.is_file():
        older = (" (only test_hypotheses.txt: written by older training code)"
                 if (job_dir / "test_hypotheses.txt").is_file() else "")
        return None, f"no {TRANSLATIONS_FILE}{older}"
    rows = []
    try:
        for i, row in iter_jsonl(path):
            missing = [k for k in ("source", "reference", "hypothesis", "src_lang", "tgt_lang")
                       if not isinstance(row.get(k), str)]
            if missing:
                return None, f"{TRANSLATIONS_FILE}:{i}: field {missing[0]!r} missing or not a string"
            scores = row.get("scores") or {}
            if not isinstance(scores, Mapping) or any(number(v) is None for v in scores.values()):
                return None, f"{TRANSLATIONS_FILE}:{i}: 'scores' must map scorer names to finite numbers"
            rows.append(row)
    except (DataError, OSError) as e:
        return None, f"unreadable {TRANSLATIONS_FILE} ({e})"
    if not rows:
        return None, f"{TRANSLATIONS_FILE} is empty"
    return rows, ""


def _failure_hint(job_dir: Path) -> str:
    log = job_dir / "train.log"
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f"; last log line: {lines[-1][:200]}" if lines else ""


def _read_json_object(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _config_value(config: Mapping, key: str) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


_MISSING = object()


def _hydra_overrides(job_dir: Path, results: dict | None) -> tuple[list[str], str | None]:
    """Hydra's ``.hydra/overrides.yaml`` (older jobs), minus any override that contradicts the configuration stored
    in ``results.json``: a launch refused in a finished folder used to rewrite the file with its own settings."""
    import yaml

    try:
        items = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError) as e:
        return [], f"unreadable .hydra/overrides.yaml ({e})"
    items = [str(i) for i in items] if isinstance(items, list) else []
    config = (results or {}).get("config")
    if not isinstance(config, Mapping):
        return items, None
    kept = []
    for item in items:
        key, _, value = item.partition("=")
        stored = _config_value(config, key.lstrip("+~"))
        if stored is not _MISSING and not isinstance(stored, (Mapping, list)):
            try:
                given = yaml.safe_load(value)
            except yaml.YAMLError:
                given = value
            if given != stored and str(given) != str(stored):
                kept.append(f"{key}={stored}")  # the finished run's own value, not the refused launch's
                continue
        kept.append(item)
    return kept, None


def job_overrides(job_dir: Path, results: dict | None) -> tuple[list[str], str | None]:
    """The command-line overrides that made this job: from its own record (run.json of the run whose results are
    here), else from Hydra's file checked against results.json (see the module docstring)."""
    identity = _read_json_object(job_dir / "run.json")
    if identity is not None and isinstance(identity.get("overrides"), list):
        if results is None or results.get("fingerprint") in (None, identity.get("fingerprint")):
            return [str(o) for o in identity["overrides"]], None
    return _hydra_overrides(job_dir, results)


def load_job(job_dir: str | os.PathLike) -> JobResult:
    job_dir = Path(job_dir)
    results, error = None, None
    res_file = job_dir / "results.json"
    if not res_file.is_file():
        error = "no results.json (the job crashed, was interrupted or is still running)" + _failure_hint(job_dir)
    else:
        try:
            results = json.loads(res_file.read_text(encoding="utf-8"))
            if not isinstance(results, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            results, error = None, f"unreadable results.json ({e})"
    items, problem = job_overrides(job_dir, results)
    error = error or problem
    overrides = parse_overrides(items)
    seed = as_seed(overrides.get("seed"))
    if seed is None and results is not None:
        seed = as_seed(results.get("seed", (results.get("config") or {}).get("seed")))
    job = JobResult(name=job_dir.name, overrides=overrides, seed=seed, results=results, path=str(job_dir), error=error)
    if results is not None:
        job.curve = read_curve(job_dir)
        job.translations, job.translations_note = read_translations(job_dir)
    return job


def _is_job(folder: Path) -> bool:
    """A training run's folder: its own record (run.json), or Hydra's of an older job."""
    return (folder / "run.json").is_file() or (folder / ".hydra" / "overrides.yaml").is_file()


def _is_rounds_run(folder: Path) -> bool:
    """A rounds run's folder (scripts/rounds.py): its record is rounds.json, its jobs are its rounds."""
    return (folder / "rounds.json").is_file()


def load_sweep(sweep_dir: str | os.PathLike, ignored: Iterable[str] = IGNORED_KEYS) -> list[JobResult]:
    """Every job of a Hydra multirun folder (a job = a sub-folder with .hydra/overrides.yaml), in job order.

    A single run folder (``python train.py`` without -m) is read as a one-job sweep.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep folder")
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: is a file, not a sweep folder")
    if _is_job(sweep_dir) or _is_rounds_run(sweep_dir):
        dirs = [sweep_dir]
    else:
        dirs = sorted((d for d in sweep_dir.iterdir() if d.is_dir() and (_is_job(d) or _is_rounds_run(d))),
                      key=_job_num)
    dirs = [r for d in dirs for r in (round_dirs(d) or [d])]
    if not dirs:
        raise FileNotFoundError(f"{sweep_dir}: no job folders (sub-folders with run.json or .hydra/overrides.yaml); "
                                "is it a `train.py -m` sweep?")
    jobs = []
    for d in dirs:
        job = load_job(d)
        if d != sweep_dir and d.parent != sweep_dir:  # a round of a rounds run: named by its run and round
            job.name = str(d.parent.relative_to(sweep_dir))
        jobs.append(job)
    jobs = drop_repeated_start_evaluations(jobs)
    assign_labels(jobs, ignored)
    refuse_duplicate_seeds(jobs)
    return jobs


def round_dirs(run_dir: Path) -> list[Path]:
    """The train run folders of a rounds run (``scripts/rounds.py``), round 0 first; [] for any other folder.

    Each ``round-k/train`` is an ordinary train.py run folder whose ``.hydra/overrides.yaml`` holds the rounds
    run's settings in train.py's words and ``round=k``, so the rounds of a sweep of rounds runs group by round."""
    found = [d for d in run_dir.glob("round-*/train") if d.is_dir() and _is_job(d)]
    number = [d.parent.name[len("round-"):] for d in found]
    return [d for _, d in sorted(zip([int(n) if n.isdigit() else 1 << 30 for n in number], found))]


def drop_repeated_start_evaluations(jobs: list[JobResult]) -> list[JobResult]:
    """Round 0 of a rounds run evaluates the start model, the same in every rounds run of a sweep that shares it:
    one per seed (and start settings) is kept, so that it counts as one configuration, not one per method."""
    seen: set[tuple] = set()
    out = []
    for j in jobs:
        if j.overrides.get("round") == "0":
            key = tuple(sorted(j.overrides.items()))
            if key in seen:
                continue
            seen.add(key)
        out.append(j)
    return out


def refuse_duplicate_seeds(jobs: Sequence[JobResult]) -> None:
    """Two folders of one configuration and seed would count as two seeds and shrink every interval."""
    seen: dict[tuple, str] = {}
    for j in jobs:
        key = (tuple(sorted(j.config_overrides.items())), j.seed)
        if j.seed is not None and key in seen:
            raise ValueError(f"{seen[key]} and {j.name} are the same configuration and seed "
                             f"({j.label}, seed {j.seed}), which would count twice: "
                             "move one of them out of the sweep folder")
        seen.setdefault(key, j.name)


def assign_labels(jobs: Sequence[JobResult], ignored: Iterable[str] = IGNORED_KEYS) -> list[str]:
    """Set each job's configuration (overrides less seed and ignored keys) and label (its varying keys).

    Returns the varying keys; keys constant across the sweep are left out of labels (see common_overrides).
    """
    ignored = tuple(ignored)
    for j in jobs:
        j.config_overrides = {k: v for k, v in j.overrides.items() if not is_ignored(k, ignored)}
    varying = varying_keys(jobs)
    for j in jobs:
        parts = [f"{k}={j.config_overrides[k]}" for k in varying if k in j.config_overrides]
        j.label = ",".join(parts) or ",".join(f"{k}={v}" for k, v in j.config_overrides.items()) or "default"
    return varying


def varying_keys(jobs: Sequence[JobResult]) -> list[str]:
    """Configuration keys whose value (or presence) differs between jobs, in first-seen order.

    Round 0 of rounds runs (the start model, with no training settings) does not make the other rounds' settings
    vary by lacking them; ``round`` itself varies."""
    trained = [j for j in jobs if j.config_overrides.get("round") != "0"] or list(jobs)
    keys: list[str] = []
    for j in jobs:
        keys += [k for k in j.config_overrides if k not in keys]
    return [k for k in keys if len({j.config_overrides.get(k) for j in (jobs if k == "round" else trained)}) > 1]


def common_overrides(jobs: Sequence[JobResult]) -> dict[str, str]:
    """Configuration overrides with the same value in every job."""
    if not jobs:
        return {}
    first = jobs[0].config_overrides
    return {k: v for k, v in first.items() if all(j.config_overrides.get(k, object()) == v for j in jobs)}
