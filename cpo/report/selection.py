"""The fair protocol: grid points per method, aggregated over seeds; one point per method selected on
the validation split; the selected points compared on the test split (significance.py).

A *method* is what an ablation compares (by default the loss: ``loss=cpo``); its *grid points*
are its settings of the tuned keys (:data:`TUNE_KEYS`: learning rate, beta, ...), each run over
several seeds. A method's selected point is the one with the best mean over seeds of a
validation metric (``select_by``). Selecting on test data would bias the comparison made on it,
so test metrics are refused unless ``allow_test_selection`` (and then marked in every table).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from cpo.report.loading import JobResult, varying_keys
from cpo.report.metrics import (METHODS, OTHER_COLORS, after_metric_names, clip_interval, direction, key_label,
                                number, setting_label, val_scorers)
from cpo.report.stats import summarize

# Keys that are settings to tune per method, not what the ablation compares.
TUNE_KEYS: tuple[str, ...] = ("optim.lr", "beta", "loss.beta", "loss.gamma", "optim.weight_decay", "optim.warmup_ratio")
STAT_COLUMNS = ("mean", "std", "n", "lo", "hi")


class SelectionError(ValueError):
    """select_by cannot be used on this sweep (the message says what to give instead)."""


@dataclass
class Method:
    label: str                  # "loss=cpo" (the method's overrides), the key used everywhere
    display: str                # "CPO"
    color: str
    loss: str | None
    configs: list[str] = field(default_factory=list)   # its grid points (configuration labels), in sweep order
    parts: dict[str, str] = field(default_factory=dict)  # the overrides that tell it apart ({"loss": "cpo"})
    ignored: set[str] = field(default_factory=set)     # keys its loss ignores (beta under SFT), never a grid edge


def job_metrics(job: JobResult, test_names: Sequence[str]) -> dict[str, float]:
    """The job's final validation metrics, test metrics after training and after-minus-before deltas."""
    r = job.results or {}
    out = {k: x for k, v in (r.get("val") or {}).items() if k.startswith("val/") and (x := number(v)) is not None}
    after, before = r.get("after") or {}, r.get("before") or {}
    for name in test_names:
        if (x := number(after.get(name))) is not None:
            out[f"test/{name}"] = x
    for name in ["pref_accuracy", *test_names]:
        a, b = number(after.get(name)), number(before.get(name))
        if a is not None and b is not None:
            out[f"delta/{name}"] = a - b
    return out


def ignored_keys(job: JobResult) -> set[str]:
    """Keys the job's loss ignores: results.json says so (``ignored_keys``); older results by the loss's kind
    (kind ``none``, SFT: beta only scales its logged rewards)."""
    r = job.results or {}
    if isinstance(r.get("ignored_keys"), list):
        return {str(k) for k in r["ignored_keys"]}
    loss = (r.get("config") or {}).get("loss")
    return {"beta", "loss.beta"} if isinstance(loss, dict) and loss.get("kind") == "none" else set()


def metric_names(df: pd.DataFrame) -> list[str]:
    return [c[: -len("_mean")] for c in df.columns if c.endswith("_mean")]


def method_parts(job: JobResult, varying: Sequence[str], tune_keys: Sequence[str]) -> dict[str, str]:
    """The job's varying overrides that are not tuned settings: what tells its method apart."""
    return {k: job.config_overrides[k] for k in varying if k not in tune_keys and k in job.config_overrides}


def method_label(job: JobResult, varying: Sequence[str], tune_keys: Sequence[str]) -> str:
    parts = method_parts(job, varying, tune_keys)
    return ",".join(f"{k}={v}" for k, v in parts.items()) or (f"loss={job.loss}" if job.loss else "default")


def display_name(parts: dict[str, str], loss: str | None) -> str:
    """"CPO", "SFT (preferred)", or "CPO (data.negatives=noised)" when the method is not the loss alone."""
    parts = dict(parts)
    if parts.get("round") == "0":  # round 0 of a rounds run: the start model, whatever the later rounds train
        return "start model (round 0)"
    loss = parts.pop("loss", loss)
    name = METHODS[loss][0] if loss in METHODS else loss
    rest = ", ".join(setting_label(k, v) for k, v in parts.items())
    if name:
        return f"{name} ({rest})" if rest else name
    return rest or "default"


def methods_of(jobs: Sequence[JobResult], tune_keys: Sequence[str] = TUNE_KEYS) -> dict[str, Method]:
    """Method label -> Method, in sweep order; one colour and display name each (METHODS for losses)."""
    varying = varying_keys(jobs)
    out: dict[str, Method] = {}
    spare = iter([c for c in OTHER_COLORS if c not in {col for _, col in METHODS.values()}] + list(OTHER_COLORS) * 4)
    for j in jobs:
        label = method_label(j, varying, tune_keys)
        if label not in out:
            parts = method_parts(j, varying, tune_keys)
            only_loss = set(parts) <= {"loss"}
            color = METHODS[j.loss][1] if only_loss and j.loss in METHODS else next(spare)
            out[label] = Method(label, display_name(parts, j.loss), color, j.loss, parts=parts)
        if j.label not in out[label].configs:
            out[label].configs.append(j.label)
        out[label].ignored |= ignored_keys(j)
    return out


def aggregate(jobs: Sequence[JobResult], tune_keys: Sequence[str] = TUNE_KEYS, level: float = 0.95) -> pd.DataFrame:
    """One row per grid point: ``config``, ``method``, one column per varying key, ``runs``
    (completed jobs), ``failed``, ``seeds``, and per metric ``<metric>_mean``, ``_std`` (ddof=1),
    ``_n`` and ``_lo``/``_hi`` (t-based ``level`` interval of the mean over seeds)."""
    ok = [j for j in jobs if j.ok]
    names = after_metric_names([j.results for j in ok])
    per_job = {id(j): job_metrics(j, names) for j in ok}
    order = list(dict.fromkeys(m for j in ok for m in sorted(per_job[id(j)], key=_metric_order)))
    varying = varying_keys(jobs)
    methods = methods_of(jobs, tune_keys)
    method_of = {c: m.label for m in methods.values() for c in m.configs}
    rows = []
    for label in dict.fromkeys(j.label for j in jobs):
        members = [j for j in jobs if j.label == label]
        done = [j for j in members if j.ok]
        row: dict[str, Any] = {"config": label, "method": method_of[label]}
        row.update({k: members[0].config_overrides.get(k) for k in varying if k not in row})
        row.update(runs=len(done), failed=len(members) - len(done), seeds=",".join(str(j.seed) for j in done))
        for m in order:
            s = summarize([per_job[id(j)][m] for j in done if m in per_job[id(j)]], level)
            lo, hi = clip_interval(m, s.lo, s.hi)  # e.g. an off-target rate's interval stays in [0, 1]
            row.update({f"{m}_mean": s.mean, f"{m}_std": s.std, f"{m}_n": s.n, f"{m}_lo": lo, f"{m}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def _metric_order(m: str) -> tuple[int, str]:
    return ({"val": 0, "test": 1, "delta": 2}.get(m.split("/")[0], 3), m)


def resolve_select_by(select_by: str, grid: pd.DataFrame, allow_test_selection: bool = False) -> tuple[str, str]:
    """(metric, how it was chosen); ``auto`` = the first QE/COMET scorer validated during training
    (val/demo_qe on the demo), else val/chrf, else val/bleu."""
    have = [m for m in metric_names(grid) if np.isfinite(pd.to_numeric(grid[f"{m}_mean"], errors="coerce")).any()]
    val = [m for m in have if m.startswith("val/")]
    if select_by == "auto":
        for m in val_scorers(val) + ["val/chrf", "val/bleu"]:
            if m in val:
                why = "a QE/COMET scorer" if m not in ("val/chrf", "val/bleu") else "no QE/COMET scorer was validated"
                return m, f"auto: {why}"
        return "", "auto: the jobs logged no validation translation metric (val/<scorer>, val/chrf or val/bleu)"
    name = select_by if "/" in select_by else f"val/{select_by}"
    logged = ", ".join(val) or "(none logged)"
    if name.startswith(("test/", "delta/")):
        if not allow_test_selection:
            raise SelectionError(f"select_by={select_by} is a test-split metric: selecting on the test split biases "
                                 "the comparison made on it; select on a validation metric (e.g. select_by=val/chrf), "
                                 "or pass "
                                 "allow_test_selection=true to mark every table as selected on test")
        return name, "on the TEST split (allow_test_selection=true): the comparison on test is biased"
    if not name.startswith("val/"):
        raise SelectionError(f"select_by={select_by}: not a validation metric; give one of {logged}")
    if name not in have:
        raise SelectionError(f"select_by={select_by}: no job logged {name}; give one of {logged}")
    return name, "given"


def select(grid: pd.DataFrame, metric: str, methods: dict[str, Method], tune_keys: Sequence[str] = TUNE_KEYS
           ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Each method's grid point with the best mean of ``metric`` over seeds (ties: more seeds, then
    grid order). Returns (the selected rows, in method order, with a ``method`` column; notes per
    method: the only grid point, a value at the edge of the grid, or why nothing was selected)."""
    notes: dict[str, str] = {}
    chosen = []
    sign = {"higher": -1.0, "lower": 1.0}
    for label in methods:
        rows = grid[(grid["method"] == label) & (grid["runs"] > 0)]
        if rows.empty:
            notes[label] = "every job of this method failed"
            continue
        if not metric or f"{metric}_mean" not in rows or not np.isfinite(rows[f"{metric}_mean"]).any():
            if len(rows) == 1:
                chosen.append(rows.index[0])
                notes[label] = "its only grid point"
            else:
                notes[label] = f"not selected: no {metric or 'validation metric'} for any of its {len(rows)} points"
            continue
        rows = rows[np.isfinite(rows[f"{metric}_mean"])]
        # A point whose failed seeds are left out of its mean would be chosen on its survivors (a diverging
        # learning rate winning on its one lucky seed): only points with every seed completed compete.
        failed = rows["failed"] if "failed" in rows else pd.Series(0, index=rows.index)
        complete = rows[failed == 0]
        skipped = "" if complete.empty or len(complete) == len(rows) else (
            f"not considered, a seed failed: {', '.join(str(c) for c in rows.loc[failed > 0, 'config'])}")
        rows = complete if not complete.empty else rows
        d = direction(metric)
        key = (rows[f"{metric}_mean"] - 1).abs() if d == "one" else rows[f"{metric}_mean"] * sign[d]
        order = sorted(range(len(rows)), key=lambda i: (key.iloc[i], -rows["runs"].iloc[i], i))
        best = rows.index[order[0]]
        chosen.append(best)
        ignored = methods[label].ignored
        note = "its only grid point" if len(rows) == 1 else _edge_note(grid, best, label, tune_keys, ignored)
        notes[label] = "; ".join(n for n in (note, skipped, _repeat_note(grid, label, ignored)) if n)
    return grid.loc[chosen].reset_index(drop=True), {k: v for k, v in notes.items() if v}


def _repeat_note(grid: pd.DataFrame, label: str, ignored: set[str]) -> str:
    """Grid points of a method that differ only in keys its loss ignores are repeats of one training (a sweep
    written before the sweeper ran such jobs once)."""
    rows = grid[grid["method"] == label]
    keys = [k for k in ignored if k in rows.columns and rows[k].nunique(dropna=True) > 1]
    if not keys:
        return ""
    names = ", ".join(dict.fromkeys(key_label(k) for k in keys))
    return f"its grid points differ in {names}, which its loss ignores: they repeat one training"


def _edge_note(grid: pd.DataFrame, best: Any, label: str, tune_keys: Sequence[str], ignored=frozenset()) -> str:
    """"learning rate 0.001 is the largest value tried" when the selected value of a tuned key is at the edge (never
    for a key the method's loss ignores, such as SFT's beta)."""
    rows = grid[grid["method"] == label]
    notes = []
    for k in tune_keys:
        if k not in grid.columns or k in ignored:
            continue
        vals = pd.to_numeric(rows[k], errors="coerce").dropna().unique()
        x = pd.to_numeric(pd.Series([grid.loc[best, k]]), errors="coerce").iloc[0]
        if len(vals) >= 2 and np.isfinite(x):
            if x == vals.max():
                notes.append(f"{setting_label(k, grid.loc[best, k])} is the largest value tried")
            elif x == vals.min():
                notes.append(f"{setting_label(k, grid.loc[best, k])} is the smallest value tried")
    return "; ".join(notes) + ("; the optimum may lie outside the grid" if notes else "")
