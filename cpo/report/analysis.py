"""One call from jobs to everything the report shows: grid, selection, comparisons, per-direction table."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cpo.report.comparison import Comparison, compare, per_direction
from cpo.report.independence import Independence, metric_independence
from cpo.report.loading import JobResult
from cpo.report.metrics import HEALTH, after_metric_names
from cpo.report.selection import (TUNE_KEYS, Method, SelectionError, aggregate, methods_of, metric_names,
                                  resolve_select_by, select)
from cpo.report.stats import DEFAULT_SAMPLES, DEFAULT_SEED


@dataclass
class Analysis:
    jobs: list[JobResult]
    grid: pd.DataFrame                  # one row per grid point (selection.aggregate)
    methods: dict[str, Method]
    select_by: str                      # the validation metric used ("" when nothing needed selecting)
    select_how: str                     # how select_by was chosen (auto, given, on TEST)
    test_selected: bool                 # selected on a test metric: every table says so
    selected: pd.DataFrame              # one grid row per method
    notes: dict[str, str]               # method -> selection note (edge of the grid, only point, ...)
    baseline: str | None                # baseline method label
    baseline_note: str                  # why there is no baseline comparison, if there is none
    comparisons: list[Comparison]
    directions: pd.DataFrame | None     # per direction and xx->en / en->xx averages, when there are several
    alpha: float
    tune_keys: tuple[str, ...]
    quality: list[str] = field(default_factory=list)   # test metrics compared (BLEU, chrF, scorers ...)
    health: list[str] = field(default_factory=list)    # health checks present (off_target, ...)
    val_references: list[str] = field(default_factory=list)  # what validation translations were scored against
    # Which metrics are the scorer that built each method's pairs (metric interference, SPEC section 9).
    independence: Independence = field(default_factory=Independence)

    @property
    def level(self) -> float:
        return 1 - self.alpha

    def display(self, method: str) -> str:
        m = self.methods.get(method)
        return m.display if m else method

    def few_seeds(self) -> dict[str, int]:
        """Selected methods with fewer than 3 seeds (display name -> seeds): their t-interval is not meaningful."""
        if not len(self.selected):
            return {}
        return {self.display(m): int(n) for m, n in zip(self.selected["method"], self.selected["runs"]) if 0 < n < 3}

    def few_seeds_text(self) -> str:
        """One sentence on the seeds, or "" when every selected method has at least 3."""
        few = self.few_seeds()
        if not few:
            return ""
        listed = ", ".join(f"{m} ({n})" for m, n in few.items())
        return (f"Fewer than 3 seeds: {listed}. Their t-interval is not meaningful (with 2 seeds it rests on one "
                f"degree of freedom, t = 12.7 at 95%; with 1 there is none), and Welch's test has little power: "
                f"run more seeds before reading the intervals.")
    def same_scorer(self, metric: str, method: str | None = None) -> bool:
        """Whether ``metric`` (``test/x``, ``val/x`` or ``x``) is a pair-building scorer: of ``method`` and the
        baseline when a method is named, of any method otherwise."""
        base = metric.split("/", 1)[1] if metric.startswith(("test/", "val/", "delta/")) else metric
        if method is None:
            return base in self.independence.metrics
        return self.independence.comparison_rests_on(method, self.baseline, base)


def find_baseline(baseline: str, methods: dict[str, Method]) -> str | None:
    """The method a ``baseline=`` names: its label (``loss=sft``), a value of it (``sft``) or its display name."""
    if not baseline:
        return None
    if baseline in methods:
        return baseline
    if "=" in baseline:  # a label with its parts in another order ("round=3,loss=cpo" for "loss=cpo,round=3")
        given = dict(part.split("=", 1) for part in baseline.split(",") if "=" in part)
        same = [m.label for m in methods.values() if m.parts == given]
        if len(same) == 1:
            return same[0]
    hits = [m.label for m in methods.values() if baseline in {m.display, *m.parts.values()}]
    if len(hits) > 1:
        raise SelectionError(f"baseline={baseline} matches several methods ({', '.join(hits)}); "
                             "give one of them exactly")
    return hits[0] if hits else None


def analyze(jobs: Sequence[JobResult], select_by: str = "auto", baseline: str = "sft", alpha: float = 0.05,
            tune_keys: Sequence[str] = TUNE_KEYS, allow_test_selection: bool = False,
            bootstrap_samples: int = DEFAULT_SAMPLES, bootstrap_seed: int = DEFAULT_SEED,
            baseline_required: bool = False) -> Analysis:
    """Aggregate the grid, select each method's point on validation, compare on test against ``baseline``.

    Raises SelectionError (one sentence, what to give instead) for a test-split or unknown
    ``select_by``, an ambiguous baseline, or a missing one when ``baseline_required``.
    """
    if not 0 < alpha < 1:
        raise SelectionError(f"alpha={alpha}: give a significance level between 0 and 1, e.g. alpha=0.05")
    tune_keys = tuple(tune_keys)
    jobs = list(jobs)
    grid = aggregate(jobs, tune_keys, 1 - alpha)
    methods = methods_of(jobs, tune_keys)
    if not len(grid) or not (grid["runs"] > 0).any():
        return Analysis(jobs, grid, methods, "", "", False, grid.iloc[0:0], {}, None, "no completed jobs", [], None,
                        alpha, tune_keys)
    metric, how = resolve_select_by(select_by, grid, allow_test_selection)
    needs_selection = any((grid[grid["method"] == m]["runs"] > 0).sum() > 1 for m in methods)
    if not metric and needs_selection:
        raise SelectionError(f"select_by={select_by}: {how.split(': ', 1)[-1]}; "
                             "give select_by=<a validation metric the jobs logged>")
    selected, notes = select(grid, metric, methods, tune_keys)
    names = after_metric_names([j.results for j in jobs if j.ok])
    quality = [n for n in names if n not in HEALTH]
    health = [n for n in names if n in HEALTH]

    base, base_note = find_baseline(baseline, methods), ""
    if base is None:
        base_note = (f"baseline={baseline} is not a method of this sweep (methods: {', '.join(methods)}); "
                     "give baseline=<one of them> for significance tests")
        if baseline_required:
            raise SelectionError(base_note)
    elif base not in set(selected["method"]):
        base_note = f"the baseline {methods[base].display} has no selected configuration ({notes.get(base, '')})"
        base = None
    comparisons = compare(jobs, selected, base, quality, alpha, bootstrap_samples, bootstrap_seed) if base else []
    directions = per_direction(jobs, selected, 1 - alpha) if len(selected) else None
    refs = sorted({str(r) for j in jobs if j.ok and (r := j.results.get("dev_references"))})
    method_of = {c: m.label for m in methods.values() for c in m.configs}
    shown = list(dict.fromkeys(quality + [m.split("/", 1)[1] for m in metric_names(grid) if m.startswith("val/")]))
    independence = metric_independence(jobs, method_of, shown)
    return Analysis(jobs, grid, methods, metric, how, metric.startswith(("test/", "delta/")), selected, notes, base,
                    base_note, comparisons, directions, alpha, tune_keys, quality, health, refs, independence)


def verdict_of(analysis: Analysis, method: str, metric: str) -> Comparison | None:
    for c in analysis.comparisons:
        if c.method == method and c.metric == metric:
            return c
    return None


def finite(x) -> bool:
    try:
        return bool(np.isfinite(float(x)))
    except (TypeError, ValueError):
        return False
