"""The selected methods compared on the test split: significance against a baseline, per direction.

A method is called **better** (or **worse**) than the baseline on a metric only when the
difference is significant at level alpha against both sources of noise that apply: seeds
(Welch's t-test over the per-seed test scores) and test sentences (paired bootstrap with the
seeds pooled per sentence, stats.py). When only one applies (one seed per side, or no test
translations), the verdict rests on that one and says so. Otherwise it is "no significant
difference", which is not evidence of equality. Each (method, metric) pair is tested at alpha
with no correction for multiple comparisons; the report says how many tests it ran.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from cpo.report.loading import JobResult
from cpo.report.metrics import HEALTH, SACREBLEU_METRICS, clip_interval, is_better, number
from cpo.report.stats import (DEFAULT_SAMPLES, DEFAULT_SEED, corpus_score, directions_of, first_mismatch,
                              paired_bootstrap, summarize, welch)


@dataclass
class Comparison:
    method: str                 # method label (loss=cpo)
    metric: str                 # test metric name (bleu)
    n: int                      # seeds of the method
    n_base: int                 # seeds of the baseline
    mean: float
    base_mean: float
    diff: float                 # mean over seeds minus the baseline's
    diff_lo: float              # Welch interval of the difference (NaN without it)
    diff_hi: float
    p_seeds: float | None       # Welch's t-test over seeds
    p_bootstrap: float | None   # paired bootstrap over test sentences, seeds pooled
    bootstrap_diff: float | None
    bootstrap_lo: float         # percentile interval of the resampled differences (NaN without a bootstrap)
    bootstrap_hi: float
    seed_pairs: str             # per seed pair bootstrap: "2 better, 0 worse of 5"
    verdict: str                # better | worse | no significant difference | not tested | not comparable
    basis: str                  # which tests the verdict rests on, or why none


def selected_jobs(jobs: Sequence[JobResult], config: str) -> list[JobResult]:
    return [j for j in jobs if j.ok and j.label == config]


def _verdict(metric: str, w, boot, alpha: float) -> tuple[str, str]:
    tests = ([("seeds", w.p, w.diff)] if w else []) + ([("test sentences", boot.p, boot.diff)] if boot else [])
    if not tests:
        return "not tested", "needs two seeds per side or test translations"
    basis = " and ".join(t for t, _, _ in tests) + ("" if len(tests) == 2 else " only")
    if all(p < alpha and d != 0 for _, p, d in tests):
        better = {is_better(d, metric) for _, _, d in tests}
        if len(better) == 1:
            return ("better" if better.pop() else "worse"), basis
    return "no significant difference", basis


def _pairs(runs: dict[int, list[dict]], base: dict[int, list[dict]], metric: str, alpha: float, n_samples: int,
           seed: int, cache: dict) -> str:
    """Per seed pair (same seed number) alone, the paired bootstrap (sacrebleu's PairedTest for one
    direction): how many pairs are significantly better or worse."""
    common = sorted(set(runs) & set(base))
    if not common:
        return "–"
    better = worse = 0
    for s in common:
        b = paired_bootstrap([runs[s]], [base[s]], metric, n_samples, seed, cache=cache)
        if b.p < alpha and b.diff != 0:
            better += is_better(b.diff, metric)
            worse += not is_better(b.diff, metric)
    return f"{better} better, {worse} worse of {len(common)}"


def compare(jobs: Sequence[JobResult], selected: pd.DataFrame, baseline: str, metrics: Sequence[str],
            alpha: float = 0.05, n_samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED) -> list[Comparison]:
    """Every selected method but the baseline against it, per test metric (health checks excluded)."""
    level = 1 - alpha
    config_of = dict(zip(selected["method"], selected["config"]))
    base_jobs = selected_jobs(jobs, config_of[baseline])
    base_tr = {j.seed: j.translations for j in base_jobs if j.translations is not None}
    reference_rows = next(iter(base_tr.values()), None)
    out: list[Comparison] = []
    cache: dict = {}  # the baseline's resamples, shared by every comparison
    for method in selected["method"]:
        if method == baseline:
            continue
        mjobs = selected_jobs(jobs, config_of[method])
        tr = {j.seed: j.translations for j in mjobs if j.translations is not None}
        mismatch = None
        if reference_rows is not None:
            for rows in [*tr.values(), *base_tr.values()]:
                mismatch = mismatch or first_mismatch(rows, reference_rows)
        for metric in metrics:
            if metric in HEALTH:
                continue
            a = [x for j in mjobs if (x := number((j.results.get("after") or {}).get(metric))) is not None]
            b = [x for j in base_jobs if (x := number((j.results.get("after") or {}).get(metric))) is not None]
            sa, sb = summarize(a, level), summarize(b, level)
            row = dict(method=method, metric=metric, n=sa.n, n_base=sb.n, mean=sa.mean, base_mean=sb.mean,
                       diff=sa.mean - sb.mean, diff_lo=np.nan, diff_hi=np.nan, p_seeds=None, p_bootstrap=None,
                       bootstrap_diff=None, bootstrap_lo=np.nan, bootstrap_hi=np.nan, seed_pairs="–")
            if mismatch:
                out.append(Comparison(**row, verdict="not comparable", basis=f"test sets differ ({mismatch})"))
                continue
            w = welch(a, b, level)
            if w:
                row.update(diff_lo=w.lo, diff_hi=w.hi, p_seeds=w.p)
            boot = None
            runs, base_runs = list(tr.values()), list(base_tr.values())
            scorable = metric in SACREBLEU_METRICS or all(metric in (r.get("scores") or {})
                                                          for rows in [*runs, *base_runs] for r in rows)
            if runs and base_runs and scorable:
                boot = paired_bootstrap(runs, base_runs, metric, n_samples, seed, level, cache)
                row.update(p_bootstrap=boot.p, bootstrap_diff=boot.diff, bootstrap_lo=boot.lo, bootstrap_hi=boot.hi,
                           seed_pairs=_pairs(tr, base_tr, metric, alpha, n_samples, seed, cache))
            verdict, basis = _verdict(metric, w, boot, alpha)
            if boot and (len(tr) < len(mjobs) or len(base_tr) < len(base_jobs)):
                basis += f" (bootstrap over the {len(tr)}+{len(base_tr)} seeds with test translations)"
            out.append(Comparison(**row, verdict=verdict, basis=basis))
    return out


def comparisons_frame(comparisons: Sequence[Comparison]) -> pd.DataFrame:
    return pd.DataFrame([asdict(c) for c in comparisons], columns=list(Comparison.__dataclass_fields__))


def per_direction(jobs: Sequence[JobResult], selected: pd.DataFrame, level: float = 0.95) -> pd.DataFrame | None:
    """Per selected method and direction (and the xx->en / en->xx averages): each test metric's mean
    over seeds, recomputed from test translations; None unless the jobs hold several directions."""
    rows = []
    for method, config in zip(selected["method"], selected["config"]):
        per_seed: dict[str, list[float]] = {}
        for j in selected_jobs(jobs, config):
            if j.translations is None:
                continue
            dirs = directions_of(j.translations)
            scorers = [k for k in (j.translations[0].get("scores") or {})]
            after = (j.results or {}).get("after") or {}
            names = [m for m in SACREBLEU_METRICS if m in after or m in ("bleu", "chrf")] + scorers
            groups: dict[str, dict[str, list[float]]] = {}
            for (src, tgt), idx in dirs.items():
                for m in names:
                    x = corpus_score(m, [j.translations], idx, tgt)
                    per_seed.setdefault(f"{src}-{tgt}|{m}", []).append(x)
                    for g, member in (("xx->en", tgt == "en"), ("en->xx", src == "en")):
                        if member:
                            groups.setdefault(g, {}).setdefault(m, []).append(x)
            if len(dirs) > 1:
                for g, ms in groups.items():
                    for m, xs in ms.items():
                        per_seed.setdefault(f"avg {g}|{m}", []).append(float(np.mean(xs)))
        for key, xs in per_seed.items():
            d, m = key.split("|")
            s = summarize(xs, level)
            lo, hi = clip_interval(m, s.lo, s.hi)
            rows.append(dict(method=method, direction=d, metric=m, n=s.n, mean=s.mean, std=s.std, lo=lo, hi=hi))
    df = pd.DataFrame(rows)
    if df.empty or df.loc[~df["direction"].str.startswith("avg "), "direction"].nunique() < 2:
        return None
    return df
