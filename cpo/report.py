"""Compare the jobs of a sweep: per-configuration mean ± std over seeds, a Markdown/CSV report and plots.

A sweep is what ``python train.py -m ...`` writes: one folder per job holding ``.hydra/overrides.yaml``,
``results.json`` (final val/train metrics and the held-out ``before``/``after`` evaluation) and
``csv/metrics.csv`` (the training curves). The same data can come from W&B online
(:func:`load_wandb`), one run per job of a group.

A *configuration* is a job's overrides less ``seed`` and the keys that do not change the experiment
(:data:`IGNORED_KEYS`); the seeds of a configuration are aggregated. Configurations are labelled by
the overrides that vary across the sweep, so ``loss=cpo,sft seed=1,2`` gives two rows,
``loss=cpo`` and ``loss=sft``, each over two seeds.

    jobs = load_sweep("multirun/2026-11-25/10-00-00")
    table = aggregate(jobs)
    write_report(jobs, table, "multirun/2026-11-25/10-00-00")   # report.md, report.csv, report.json, plots/
"""
from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cpo.io import atomic_write_bytes, atomic_write_json, atomic_write_text

# Override keys that do not change the experiment (a key matches itself and everything under it).
IGNORED_KEYS: tuple[str, ...] = (
    "seed", "trainer.val_check_interval", "trainer.limit_val_batches", "trainer.enable_progress_bar",
    "evaluate", "logger", "cache_dir", "hydra", "save_policy", "experiment_name",
)
BETA_KEYS = ("beta", "loss.beta")

# Final validation metrics reported per configuration, in table order. The logps/* ones are
# loss-independent (policy log-probabilities); the rewards/* ones are the loss's own (beta-scaled,
# reference-relative for DPO), so compare them within a loss only.
VAL_METRICS = (
    "val/rewards/accuracies", "val/logps/accuracies", "val/rewards/margins", "val/logps/margins", "val/nll_loss",
)
# Keys of results["after"] that are not translation-quality scores of the test set.
_NOT_TEST_SCORES = {"pairs", "n", "pref_accuracy", "logp_margin", "bleu_signature"}
TRAIN_CURVES = ("train/loss", "train/rewards/margins", "train/rewards/accuracies")
VAL_CURVES = ("val/loss", "val/logps/accuracies", "val/nll_loss", "val/chrf")
PLOT_FILES = ("curves_train.png", "curves_val.png", "beta.png", "test_metrics.png", "test_deltas.png")


class WandbUnavailable(RuntimeError):
    """W&B online could not be reached (no network, no login, or no such project/group)."""


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

    @property
    def ok(self) -> bool:
        return self.results is not None


# --------------------------------------------------------------------------- loading


def is_ignored(key: str, ignored: Iterable[str] = IGNORED_KEYS) -> bool:
    key = key.lstrip("+~")
    return any(key == k or key.startswith(k + ".") or (k == "logger" and key.startswith("logger")) for k in ignored)


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """["loss=cpo", "+x.y=1"] -> {"loss": "cpo", "x.y": "1"}; a bare "~key" deletion maps to ""."""
    out: dict[str, str] = {}
    for item in items:
        item = str(item)
        key, sep, value = item.partition("=")
        out[key.strip().lstrip("+~")] = value.strip() if sep else ""
    return out


def split_run_name(name: str) -> dict[str, str] | None:
    """"beta=0.1,loss=cpo,seed=1" (the W&B run name train.py gives) -> overrides, or None if it is not one."""
    if not name or "=" not in name:
        return None
    parts = re.split(r",(?=[+~]?[A-Za-z_][\w.\-/]*=)", name)
    if not all(re.match(r"^[+~]?[A-Za-z_][\w.\-/]*=", p) for p in parts):
        return None
    return parse_overrides(parts)


def _as_seed(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _job_num(path: Path) -> tuple[int, str]:
    m = re.match(r"(\d+)_", path.name)
    return (int(m.group(1)) if m else 1 << 30, path.name)


def read_curve(job_dir: Path) -> pd.DataFrame | None:
    """The job's logged metrics (Lightning CSVLogger), else its offline W&B history, else None."""
    csv = job_dir / "csv" / "metrics.csv"
    if csv.is_file():
        try:
            df = pd.read_csv(csv)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
            df = None
        if df is not None and "step" in df.columns:
            return _clean_curve(df)
    runs = sorted((job_dir / "wandb_files" / "wandb").glob("offline-run-*"))
    if runs:
        try:
            from cpo.wandb_offline import read_offline_run

            return history_to_curve(read_offline_run(runs[-1])["history"])
        except Exception:  # a curve is a nice-to-have: a damaged W&B file must not stop the report
            return None
    return None


def _clean_curve(df: pd.DataFrame) -> pd.DataFrame:
    cols = ["step"] + [c for c in df.columns if c.startswith(("train/", "val/", "test/"))]
    df = df[cols].copy()
    df["step"] = pd.to_numeric(df["step"], errors="coerce")
    for c in cols[1:]:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df.dropna(subset=["step"]).reset_index(drop=True)


def history_to_curve(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """W&B history rows -> the same shape as the CSV curve (step = trainer/global_step, else _step)."""
    out = []
    for row in rows:
        step = row.get("trainer/global_step", row.get("_step"))
        if step is None:
            continue
        rec: dict[str, Any] = {"step": step}
        for k, v in row.items():
            if k.startswith(("train/", "val/", "test/")) and "/samples/" not in k and _number(v) is not None:
                rec[k] = float(v)  # ("val/samples/*": a W&B table's bookkeeping, not a metric)
        if len(rec) > 1:
            out.append(rec)
    if not out:
        return pd.DataFrame({"step": pd.Series(dtype=float)})
    return _clean_curve(pd.DataFrame.from_records(out))


def _failure_hint(job_dir: Path) -> str:
    log = job_dir / "train.log"
    if not log.is_file():
        return ""
    try:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f"; last log line: {lines[-1][:200]}" if lines else ""


def load_job(job_dir: str | os.PathLike) -> JobResult:
    job_dir = Path(job_dir)
    ov_file = job_dir / ".hydra" / "overrides.yaml"
    import yaml

    try:
        items = yaml.safe_load(ov_file.read_text(encoding="utf-8")) or []
    except (OSError, yaml.YAMLError) as e:
        items, ov_error = [], f"unreadable .hydra/overrides.yaml ({e})"
    else:
        ov_error = None
    overrides = parse_overrides(items if isinstance(items, list) else [])
    results, error = None, ov_error
    res_file = job_dir / "results.json"
    if not res_file.is_file():
        error = "no results.json (the job crashed or is still running)" + _failure_hint(job_dir)
    else:
        try:
            results = json.loads(res_file.read_text(encoding="utf-8"))
            if not isinstance(results, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            results, error = None, f"unreadable results.json ({e})"
    seed = _as_seed(overrides.get("seed"))
    if seed is None and results is not None:
        seed = _as_seed(results.get("seed", (results.get("config") or {}).get("seed")))
    return JobResult(
        name=job_dir.name, overrides=overrides, seed=seed, results=results,
        curve=read_curve(job_dir) if results is not None else None, path=str(job_dir), error=error,
    )


def load_sweep(sweep_dir: str | os.PathLike, ignored: Iterable[str] = IGNORED_KEYS) -> list[JobResult]:
    """Every job of a Hydra multirun folder (a job = a sub-folder with .hydra/overrides.yaml), in job order.

    A single run folder (``python train.py`` without -m) is read as a one-job sweep.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"{sweep_dir}: no such sweep folder")
    if (sweep_dir / ".hydra" / "overrides.yaml").is_file():
        dirs = [sweep_dir]
    else:
        dirs = sorted((d for d in sweep_dir.iterdir() if d.is_dir() and (d / ".hydra" / "overrides.yaml").is_file()), key=_job_num)
    if not dirs:
        raise FileNotFoundError(f"{sweep_dir}: no job folders (sub-folders with .hydra/overrides.yaml); is it a `train.py -m` sweep?")
    jobs = [load_job(d) for d in dirs]
    assign_labels(jobs, ignored)
    return jobs


def assign_labels(jobs: Sequence[JobResult], ignored: Iterable[str] = IGNORED_KEYS) -> list[str]:
    """Set each job's configuration (overrides less seed and ignored keys) and label (the varying ones).

    Returns the varying keys. Keys constant across the sweep are left out of labels (see common_overrides).
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
    """Configuration keys whose value (or presence) differs between jobs, in first-seen order."""
    keys: list[str] = []
    for j in jobs:
        keys += [k for k in j.config_overrides if k not in keys]
    return [k for k in keys if len({j.config_overrides.get(k) for j in jobs}) > 1]


def common_overrides(jobs: Sequence[JobResult]) -> dict[str, str]:
    """Configuration overrides with the same value in every job."""
    if not jobs:
        return {}
    first = jobs[0].config_overrides
    return {k: v for k, v in first.items() if all(j.config_overrides.get(k, object()) == v for j in jobs)}


# --------------------------------------------------------------------------- W&B online


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def wandb_run_to_job(run: Any, history: Iterable[Mapping[str, Any]] | None = None) -> JobResult:
    """A ``wandb.apis.public.Run`` (or any object with name, id, state, config, summary_metrics and
    scan_history()) -> JobResult, with results shaped like results.json.

    train.py logs the resolved config under ``config``, final metrics as ``train/*`` and ``val/*``
    and the held-out evaluation after training as ``test/*`` (the ``before`` evaluation is not
    logged to W&B, so no deltas); the run name is the sweep's varying overrides (``loss=cpo,seed=1``).
    """
    raw_config = dict(getattr(run, "config", None) or {})
    cfg = raw_config.get("config") if isinstance(raw_config.get("config"), Mapping) else raw_config
    cfg = dict(cfg)
    summary = getattr(run, "summary_metrics", None)
    if summary is None:
        summary = getattr(run, "summary", None) or {}
    summary = dict(summary)
    name = getattr(run, "name", None) or getattr(run, "id", "run")
    overrides = split_run_name(name) or {}
    seed = _as_seed(overrides.get("seed", cfg.get("seed")))
    state = str(getattr(run, "state", "finished") or "finished").lower()
    run_path = "/".join(str(p) for p in getattr(run, "path", []) or []) or str(getattr(run, "id", name))

    val = {k: x for k, v in summary.items() if k.startswith("val/") and (x := _number(v)) is not None}
    train = {k: x for k, v in summary.items() if k.startswith("train/") and (x := _number(v)) is not None}
    after = {k[len("test/"):]: x for k, v in summary.items() if k.startswith("test/") and (x := _number(v)) is not None}
    loss_cfg = cfg.get("loss") if isinstance(cfg.get("loss"), Mapping) else {}
    results: dict[str, Any] | None = {
        "config": cfg, "loss": loss_cfg.get("name"), "beta": loss_cfg.get("beta", cfg.get("beta")), "seed": seed,
        "trainable_parameters": raw_config.get("trainable_parameters"), "global_steps": _number(summary.get("trainer/global_step")),
        "val": val, "train": train, "wandb_run": run_path,
    }
    if after:
        results["after"] = after
    error = None
    if state != "finished":
        results, error = None, f"W&B run state is {state!r}"
    elif not val and not train:
        results, error = None, "W&B run has no train/ or val/ metrics in its summary"
    curve = None
    if results is not None:
        if history is None and hasattr(run, "scan_history"):
            history = run.scan_history(page_size=1000)
        curve = history_to_curve(history or [])
    return JobResult(name=name, overrides=overrides, seed=seed, results=results, curve=curve, path=run_path, error=error)


def load_wandb(project: str, group: str | None, entity: str | None = None, timeout: int = 30,
               ignored: Iterable[str] = IGNORED_KEYS, api: Any = None) -> list[JobResult]:
    """The runs of a W&B project (one group: a sweep) as jobs. Needs network access and a login."""
    if not project:
        raise ValueError("source=wandb needs wandb.project")
    path = f"{entity}/{project}" if entity else project
    hint = (
        "source=wandb needs network access to the W&B server and a login (WANDB_API_KEY or `wandb login`)"
        + (f"; WANDB_MODE={os.environ['WANDB_MODE']} is set" if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun") else "")
        + ". For runs on this machine use source=local sweep=<multirun folder>."
    )
    try:
        if api is None:
            import wandb

            api = wandb.Api(timeout=timeout)
        runs = list(api.runs(path, filters={"group": group} if group else None, lazy=False))
    except Exception as e:
        raise WandbUnavailable(f"cannot read runs of W&B project {path!r} (group {group!r}): {type(e).__name__}: {e}. {hint}") from e
    if not runs:
        raise WandbUnavailable(f"W&B project {path!r} has no runs" + (f" in group {group!r}" if group else ""))
    try:
        jobs = [wandb_run_to_job(r) for r in runs]
    except Exception as e:
        raise WandbUnavailable(f"reading W&B runs of {path!r} failed: {type(e).__name__}: {e}. {hint}") from e
    if any(not j.overrides for j in jobs):
        # Run names that are not "k=v,..." (renamed runs): use the config keys that differ between runs.
        flat = [_flatten(j.results["config"]) if j.results else {} for j in jobs]
        keys = sorted({k for f in flat for k in f})
        varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat if f}) > 1]
        for j, f in zip(jobs, flat):
            if not j.overrides:
                j.overrides = {k: str(f.get(k)) for k in varying}
    jobs.sort(key=lambda j: j.name)
    assign_labels(jobs, ignored)
    return jobs


# --------------------------------------------------------------------------- aggregation


def higher_is_better(metric: str) -> bool:
    """Every reported metric is higher-better except losses and NLL."""
    base = metric.split("/")[-1].lower()
    return not ("nll" in base or base == "loss" or base.endswith("_loss"))


def test_scores(jobs: Sequence[JobResult]) -> list[str]:
    """Scorer names in results["after"] (bleu, chrf first, then QE/COMET scorers in first-seen order)."""
    names: list[str] = []
    for j in jobs:
        for k, v in ((j.results or {}).get("after") or {}).items():
            if k not in _NOT_TEST_SCORES and _number(v) is not None and k not in names:
                names.append(k)
    first = [n for n in ("bleu", "chrf") if n in names]
    return first + [n for n in names if n not in first]


def job_metrics(job: JobResult, scores: Sequence[str]) -> dict[str, float]:
    """The reported metrics of one job (missing ones absent)."""
    r = job.results or {}
    out: dict[str, float] = {}
    val = r.get("val") or {}
    for m in VAL_METRICS:
        if (x := _number(val.get(m))) is not None:
            out[m] = x
    after, before = r.get("after") or {}, r.get("before") or {}
    for s in scores:
        if (x := _number(after.get(s))) is not None:
            out[f"test/{s}"] = x
    for s in ["pref_accuracy", *scores]:
        a, b = _number(after.get(s)), _number(before.get(s))
        if a is not None and b is not None:
            out[f"delta/{s}"] = a - b
    return {k: v for k, v in out.items() if math.isfinite(v)}


def metric_names(df: pd.DataFrame) -> list[str]:
    return [c[: -len("_mean")] for c in df.columns if c.endswith("_mean")]


def aggregate(jobs: Sequence[JobResult]) -> pd.DataFrame:
    """One row per configuration: ``<metric>_mean``, ``_std`` (sample std over seeds, ddof=1; NaN for
    one seed), ``_n`` and ``_best`` (True on the best mean of the column; higher is better except
    NLL/loss) for the final val preference accuracies and margins, val NLL, the test scores after
    training and the after-minus-before deltas. Also ``config`` (the label), one column per
    varying override, ``runs`` (completed jobs), ``failed`` and ``seeds``.
    """
    ok = [j for j in jobs if j.ok]
    scores = test_scores(ok)
    order = [m for m in VAL_METRICS] + [f"test/{s}" for s in scores] + [f"delta/{s}" for s in ["pref_accuracy", *scores]]
    per_job = {id(j): job_metrics(j, scores) for j in ok}
    present = [m for m in order if any(m in per_job[id(j)] for j in ok)]
    varying = varying_keys(jobs)
    labels: list[str] = []
    for j in jobs:
        if j.label not in labels:
            labels.append(j.label)
    rows = []
    for label in labels:
        members = [j for j in jobs if j.label == label]
        done = [j for j in members if j.ok]
        row: dict[str, Any] = {"config": label}
        for k in varying:
            if k not in ("config", "runs", "failed", "seeds"):
                row[k] = members[0].config_overrides.get(k)
        row["runs"] = len(done)
        row["failed"] = len(members) - len(done)
        row["seeds"] = ",".join(str(j.seed) for j in done)
        for m in present:
            vals = np.array([per_job[id(j)][m] for j in done if m in per_job[id(j)]], dtype=float)
            row[f"{m}_mean"] = float(vals.mean()) if vals.size else np.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else np.nan
            row[f"{m}_n"] = int(vals.size)
        rows.append(row)
    df = pd.DataFrame(rows)
    for m in present:
        df[f"{m}_best"] = best_mask(df[f"{m}_mean"], higher_is_better(m))
    # Put each metric's four columns together.
    lead = [c for c in df.columns if not any(c == f"{m}_{s}" for m in present for s in ("mean", "std", "n", "best"))]
    return df[lead + [f"{m}_{s}" for m in present for s in ("mean", "std", "n", "best")]]


def best_mask(means: pd.Series, higher: bool) -> pd.Series:
    """True on the best finite mean (ties all marked); all False when fewer than two configurations have one."""
    vals = pd.to_numeric(means, errors="coerce")
    finite = vals[np.isfinite(vals)]
    if len(finite) < 2:
        return pd.Series(False, index=means.index)
    best = finite.max() if higher else finite.min()
    return pd.Series(np.isclose(vals, best, rtol=1e-12, atol=0.0) & np.isfinite(vals), index=means.index)


def clearly_best(df: pd.DataFrame, metric: str) -> bool:
    """The best configuration's mean ± std does not overlap the runner-up's (both over ≥ 2 seeds)."""
    higher = higher_is_better(metric)
    sub = df[np.isfinite(pd.to_numeric(df[f"{metric}_mean"], errors="coerce"))]
    if len(sub) < 2:
        return False
    sub = sub.sort_values(f"{metric}_mean", ascending=not higher)
    a, b = sub.iloc[0], sub.iloc[1]
    if a[f"{metric}_n"] < 2 or b[f"{metric}_n"] < 2:
        return False
    gap = (a[f"{metric}_mean"] - b[f"{metric}_mean"]) * (1 if higher else -1)
    return bool(gap > a[f"{metric}_std"] + b[f"{metric}_std"])


def contrast(df: pd.DataFrame, baseline: str, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Each configuration minus ``baseline`` (a config label): the difference of means per metric and
    whether it exceeds the seed spread (|diff| > std + std_baseline, both over ≥ 2 seeds)."""
    if baseline not in set(df["config"]):
        raise KeyError(f"no configuration {baseline!r}; have {list(df['config'])}")
    metrics = list(metrics or metric_names(df))
    base = df[df["config"] == baseline].iloc[0]
    rows = []
    for _, r in df[df["config"] != baseline].iterrows():
        for m in metrics:
            diff = r[f"{m}_mean"] - base[f"{m}_mean"]
            spread = r[f"{m}_std"] + base[f"{m}_std"]
            enough = r[f"{m}_n"] >= 2 and base[f"{m}_n"] >= 2 and np.isfinite(spread)
            better = diff > 0 if higher_is_better(m) else diff < 0
            rows.append({
                "config": r["config"], "metric": m, "diff": diff, "seed_spread": spread,
                "beyond_spread": bool(enough and abs(diff) > spread), "better": bool(better) if np.isfinite(diff) else None,
            })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- formatting


def fmt(x: float, ref: float | None = None) -> str:
    """A number with decimals chosen by the magnitude of ``ref`` (default ``x``)."""
    if x is None or not np.isfinite(x):
        return "–"
    r = abs(ref if ref is not None and np.isfinite(ref) else x)
    if r >= 100:
        return f"{x:.1f}"
    if r >= 1:
        return f"{x:.2f}"
    if r >= 0.01 or r == 0:
        return f"{x:.3f}"
    return f"{x:.2e}"


def cell(row: Mapping[str, Any], metric: str, mark_best: bool = True) -> str:
    n = int(row[f"{metric}_n"])
    if n == 0:
        return "–"
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    text = f"{fmt(mean)} ± {fmt(std, mean) if np.isfinite(std) else '–'} ({n})"
    return f"**{text}**" if mark_best and bool(row.get(f"{metric}_best", False)) else text


def markdown_table(df: pd.DataFrame) -> str:
    metrics = metric_names(df)
    head = ["configuration", "runs"] + [f"{m} {'↑' if higher_is_better(m) else '↓'}" + (" †" if clearly_best(df, m) else "") for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---", "---:"] + ["---:"] * len(metrics)) + "|"]
    for _, r in df.iterrows():
        runs = f"{r['runs']}" + (f" (+{r['failed']} failed)" if r["failed"] else "")
        label = str(r["config"]).replace("|", "\\|")
        lines.append("| " + " | ".join([f"`{label}`", runs] + [cell(r, m) for m in metrics]) + " |")
    return "\n".join(lines)


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table with "mean ± std (n)" strings (best marked with *), for notebooks."""
    out = pd.DataFrame({"config": df["config"], "runs": df["runs"]})
    for m in metric_names(df):
        out[m] = [cell(r, m, mark_best=False) + (" *" if r[f"{m}_best"] else "") for _, r in df.iterrows()]
    return out.set_index("config")


# --------------------------------------------------------------------------- plots


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def _figure(n_panels: int, width: float = 4.6, height: float = 3.4, ncols: int | None = None):
    from matplotlib.figure import Figure  # no pyplot: no global state, always the Agg canvas

    ncols = ncols or min(n_panels, 3)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:n_panels])


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(labels)}


def _legend(fig, axes, n_items: int) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(n_items, 3), fontsize="small", frameon=False)


def seed_band(curves: Sequence[pd.DataFrame], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """(steps, mean, std, n seeds) of ``metric`` over seeds, each seed interpolated onto the steps
    that any seed logged inside the range common to all of them; None if no seed logged it."""
    series = []
    for c in curves:
        if c is None or metric not in c.columns:
            continue
        s = c[["step", metric]].dropna().groupby("step")[metric].mean().sort_index()
        if len(s):
            series.append(s)
    if not series:
        return None
    lo, hi = max(s.index.min() for s in series), min(s.index.max() for s in series)
    if lo > hi:  # seeds do not overlap: fall back to the longest one alone
        series = [max(series, key=len)]
        lo, hi = series[0].index.min(), series[0].index.max()
    grid = np.unique(np.concatenate([s.index.to_numpy(dtype=float) for s in series]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    ys = np.vstack([np.interp(grid, s.index.to_numpy(dtype=float), s.to_numpy(dtype=float)) for s in series])
    std = ys.std(axis=0, ddof=1) if len(series) > 1 else np.full(grid.shape, np.nan)
    return grid, ys.mean(axis=0), std, len(series)


def plot_curves(jobs: Sequence[JobResult], metrics: Sequence[str], path: Path, title: str) -> str | None:
    """Mean over seeds ± std band per configuration for each metric vs step. None if no data (skipped)."""
    ok = [j for j in jobs if j.ok and j.curve is not None]
    labels = list(dict.fromkeys(j.label for j in ok))
    data = {m: {lab: seed_band([j.curve for j in ok if j.label == lab], m) for lab in labels} for m in metrics}
    metrics = [m for m in metrics if any(v is not None for v in data[m].values())]
    if not metrics:
        return None
    colors = _colors(labels)
    fig, axes = _figure(len(metrics))
    for ax, m in zip(axes, metrics):
        for lab in labels:
            band = data[m][lab]
            if band is None:
                continue
            x, mean, std, n = band
            ax.plot(x, mean, color=colors[lab], label=lab, marker="o" if len(x) <= 12 else None, ms=3)
            if n > 1:
                ax.fill_between(x, mean - std, mean + std, color=colors[lab], alpha=0.2, linewidth=0)
        missing = [lab for lab in labels if data[m][lab] is None]
        if missing:  # e.g. SFT logs no train/rewards/*: say so rather than leave the reader guessing
            note = "not logged by: " + ", ".join(missing)
            if len(note) > 60:
                note = f"not logged by {len(missing)} of {len(labels)} configurations"
            ax.text(0.01, 0.01, note, transform=ax.transAxes, fontsize="x-small", color="dimgray", va="bottom", ha="left")
        ax.set_title(m, fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} (mean ± std over seeds)", fontsize="medium")
    _legend(fig, axes, len(labels))
    _save(fig, path)
    return str(path)


def _beta_value(job: JobResult, key: str) -> float | None:
    try:
        return float(job.config_overrides[key])
    except (KeyError, ValueError):
        return None


def plot_beta(jobs: Sequence[JobResult], df: pd.DataFrame, path: Path) -> tuple[str | None, str]:
    """Metric vs beta (log x) per configuration family, when the sweep varies beta or loss.beta."""
    varying = varying_keys(jobs)
    bkeys = [k for k in BETA_KEYS if k in varying]
    if not bkeys:
        return None, "the sweep does not vary beta or loss.beta"
    key = bkeys[0]
    metrics = [m for m in metric_names(df) if m.startswith("test/")] + [m for m in ("val/logps/accuracies",) if m in metric_names(df)]
    if not metrics:
        return None, "no test or validation metrics to plot against beta"
    others = [k for k in varying if k not in bkeys]
    by_label = {j.label: j for j in jobs}
    points: dict[str, list[tuple[float, pd.Series]]] = {}
    for _, r in df.iterrows():
        j = by_label.get(r["config"])
        b = _beta_value(j, key) if j else None
        if b is None:
            continue
        family = ",".join(f"{k}={j.config_overrides[k]}" for k in others if k in j.config_overrides) or "all"
        points.setdefault(family, []).append((b, r))
    if not points or max(len(set(b for b, _ in p)) for p in points.values()) < 2:
        return None, f"fewer than two numeric {key} values per configuration"
    log_x = all(b > 0 for p in points.values() for b, _ in p)
    families = list(points)
    colors = _colors(families)
    fig, axes = _figure(len(metrics))
    for ax, m in zip(axes, metrics):
        for fam in families:
            pts = sorted(((b, r[f"{m}_mean"], r[f"{m}_std"]) for b, r in points[fam] if np.isfinite(r[f"{m}_mean"])), key=lambda t: t[0])
            if not pts:
                continue
            x, y, e = (np.array(v, dtype=float) for v in zip(*pts))
            ax.errorbar(x, y, yerr=np.where(np.isfinite(e), e, 0.0), color=colors[fam], label=fam, marker="o", ms=4, capsize=3)
        if log_x:
            ax.set_xscale("log")
            ticks = sorted({b for p in points.values() for b, _ in p})
            ax.set_xticks(ticks, [f"{b:g}" for b in ticks])
            ax.minorticks_off()
        ax.set_title(m + (" ↑" if higher_is_better(m) else " ↓"), fontsize="medium")
        ax.set_xlabel(key)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"metrics vs {key} (mean ± std over seeds)", fontsize="medium")
    _legend(fig, axes, len(families))
    _save(fig, path)
    return str(path), "" if log_x else f"{key} has values ≤ 0: linear x axis"


def plot_bars(df: pd.DataFrame, metrics: Sequence[str], path: Path, title: str, zoom: bool = True) -> str | None:
    """One panel per metric, one bar per configuration with std error bars. ``zoom``: let the y axis start
    above 0 to show small differences of large positive values (not for deltas, where 0 is the point)."""
    metrics = [m for m in metrics if np.isfinite(pd.to_numeric(df[f"{m}_mean"], errors="coerce")).any()]
    if not metrics:
        return None
    has_data = np.column_stack([np.isfinite(pd.to_numeric(df[f"{m}_mean"], errors="coerce")) for m in metrics]).any(axis=1)
    df = df[has_data]  # configurations whose every job failed have no bar
    labels = list(df["config"])
    colors = _colors(labels)
    fig, axes = _figure(len(metrics), width=max(3.6, 0.55 * len(labels) + 2.0), height=3.8)
    x = np.arange(len(labels))
    for ax, m in zip(axes, metrics):
        means = pd.to_numeric(df[f"{m}_mean"], errors="coerce").to_numpy(dtype=float)
        stds = np.nan_to_num(pd.to_numeric(df[f"{m}_std"], errors="coerce").to_numpy(dtype=float))
        ax.bar(x, np.nan_to_num(means), yerr=stds, capsize=4, color=[colors[lab] for lab in labels], edgecolor="black", linewidth=0.5)
        finite = means[np.isfinite(means)]
        zoomed = False
        if zoom and finite.size and np.all(finite > 0):  # zoom in on the differences: the axis then need not start at 0
            lo = np.nanmin(means - stds)
            hi = np.nanmax(means + stds)
            pad = max(hi - lo, abs(hi) * 1e-3) * 0.35
            zoomed = lo - pad > 0
            ax.set_ylim(max(0.0, lo - pad), hi + pad)
        y0 = max(ax.get_ylim()[0], 0.0) if np.all(finite >= 0) else ax.get_ylim()[0]
        for xi, mean in zip(x, means):  # the value at the foot of each bar, clear of the error bar
            if np.isfinite(mean):
                ax.annotate(fmt(mean), (xi, y0), xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                            fontsize="x-small", bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
        ax.set_xticks(x, labels, rotation=30 if len(labels) > 2 else 0, ha="right" if len(labels) > 2 else "center", fontsize="small")
        ax.set_title(m + (" ↑" if higher_is_better(m) else " ↓") + (" (y axis zoomed)" if zoomed else ""), fontsize="medium")
        ax.grid(alpha=0.3, axis="y")
        ax.axhline(0, color="black", linewidth=0.6)
    fig.suptitle(title, fontsize="medium")
    _save(fig, path)
    return str(path)


def make_plots(jobs: Sequence[JobResult], df: pd.DataFrame, plot_dir: str | os.PathLike) -> tuple[dict[str, str], dict[str, str]]:
    """Write the PNGs; returns ({plot: file}, {plot: why it was skipped})."""
    plot_dir = Path(plot_dir)
    made: dict[str, str] = {}
    skipped: dict[str, str] = {}

    def run(name: str, fn: Callable[[], Any], reason: str) -> None:
        out = fn()
        extra = ""
        if isinstance(out, tuple):
            out, extra = out
        if out:
            made[name] = out
        else:
            skipped[name] = extra or reason
        if extra and out:
            skipped[name + " (note)"] = extra

    metrics = metric_names(df) if len(df) else []
    run("training curves", lambda: plot_curves(jobs, TRAIN_CURVES, plot_dir / "curves_train.png", "training curves"),
        "no train/* metrics in the jobs' csv/metrics.csv (logger=none?)")
    run("validation curves", lambda: plot_curves(jobs, VAL_CURVES, plot_dir / "curves_val.png", "validation curves"),
        "no val/* metrics in the jobs' csv/metrics.csv")
    run("metrics vs beta", lambda: plot_beta(jobs, df, plot_dir / "beta.png"), "")
    run("test metrics", lambda: plot_bars(df, [m for m in metrics if m.startswith("test/")], plot_dir / "test_metrics.png",
                                          "held-out test metrics after training (mean ± std over seeds)"),
        "no held-out test metrics (evaluate.before_after=false?)")
    run("test deltas", lambda: plot_bars(df, [m for m in metrics if m.startswith("delta/")], plot_dir / "test_deltas.png",
                                         "after − before training (mean ± std over seeds)", zoom=False),
        "no before/after pairs (evaluate.before_after=false, or W&B source)")
    produced = {Path(p).name for p in made.values()}
    for stale in PLOT_FILES:  # a plot skipped this time must not leave last time's file behind
        if stale not in produced:
            (plot_dir / stale).unlink(missing_ok=True)
    return made, skipped


# --------------------------------------------------------------------------- report


def render_markdown(jobs: Sequence[JobResult], df: pd.DataFrame, source: str, made: Mapping[str, str],
                    skipped: Mapping[str, str], out_dir: Path) -> str:
    ok = [j for j in jobs if j.ok]
    failed = [j for j in jobs if not j.ok]
    lines = [f"# Sweep report: `{source}`", ""]
    lines.append(f"{len(jobs)} jobs: {len(ok)} completed, {len(failed)} failed; {len(df)} configurations "
                 "(a configuration = a job's overrides less seed and keys that do not change the experiment).")
    common = common_overrides(jobs)
    if common:
        lines += ["", "Common to every job: " + ", ".join(f"`{k}={v}`" for k, v in common.items()) + "."]
    lines += ["", "## Results", ""]
    if len(df) and metric_names(df):
        lines.append(markdown_table(df))
        lines += [
            "",
            "Cells: mean ± std (n) over seeds (std = sample standard deviation, ddof=1; – with one seed). "
            "**Bold**: best mean of the column. † on a column: the best configuration's mean ± std does not "
            "overlap the runner-up's (both with ≥ 2 seeds).",
            "",
            "Higher is better (↑) for every column except ↓ (lower is better): "
            + ", ".join(f"`{m}`" for m in metric_names(df) if not higher_is_better(m)) + "."
            if any(not higher_is_better(m) for m in metric_names(df)) else "Higher is better (↑) for every column.",
            "",
            "- `val/*`: final validation metrics. `val/logps/*` compare the policy's log-probabilities of the "
            "chosen and rejected translations, so they are comparable across losses; `val/rewards/*` are each "
            "loss's own rewards (beta-scaled; relative to the reference model for DPO), comparable within a loss.",
            "- `test/*`: held-out test set after training (BLEU, chrF and each QE/COMET scorer).",
            "- `delta/*`: after minus before training, per seed (`delta/pref_accuracy` on the validation pairs).",
        ]
    else:
        lines.append("No completed jobs with metrics: nothing to compare.")
    lines += ["", "## Plots", ""]
    for name, p in made.items():
        rel = os.path.relpath(p, out_dir)
        lines.append(f"- {name}: `{rel}`  ")
        lines.append(f"  ![{name}]({rel})")
    for name, why in skipped.items():
        lines.append(f"- {name}: {'note' if name.endswith('(note)') else 'skipped'}: {why}")
    lines += ["", "## Failed jobs", ""]
    if failed:
        for j in failed:
            lines.append(f"- `{j.name}` ({j.label}, seed {j.seed}): {j.error}")
    else:
        lines.append("None.")
    lines += ["", "## Configurations", ""]
    for label in dict.fromkeys(j.label for j in jobs):
        members = [j for j in jobs if j.label == label]
        full = ", ".join(f"{k}={v}" for k, v in members[0].config_overrides.items()) or "(defaults)"
        lines.append(f"- `{label}`: {full}; jobs: " + ", ".join(f"`{j.name}`" for j in members))
    return "\n".join(lines) + "\n"


def write_report(jobs: Sequence[JobResult], df: pd.DataFrame | None, out_dir: str | os.PathLike, source: str | None = None,
                 plots: bool = True) -> dict[str, Any]:
    """Write report.md, report.csv, report.json and plots/*.png into ``out_dir``; returns the manifest."""
    out_dir = Path(out_dir)
    df = aggregate(jobs) if df is None else df
    source = source or str(out_dir)
    made, skipped = make_plots(jobs, df, out_dir / "plots") if plots else ({}, {"plots": "plots=false"})
    md = render_markdown(jobs, df, source, made, skipped, out_dir)
    atomic_write_text(out_dir / "report.csv", df.to_csv(index=False))
    manifest = {
        "source": source,
        "jobs": len(jobs),
        "completed": sum(j.ok for j in jobs),
        "configurations": list(df["config"]) if len(df) else [],
        "metrics": {m: ("higher" if higher_is_better(m) else "lower") for m in (metric_names(df) if len(df) else [])},
        "common_overrides": common_overrides(jobs),
        "failed": [{"job": j.name, "config": j.label, "seed": j.seed, "error": j.error} for j in jobs if not j.ok],
        "plots": {k: os.path.relpath(v, out_dir) for k, v in made.items()},
        "skipped_plots": dict(skipped),
    }
    atomic_write_json(out_dir / "report.json", manifest)
    atomic_write_text(out_dir / "report.md", md)
    return manifest
