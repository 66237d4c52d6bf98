"""Statistics of a comparison: spread over seeds and paired bootstrap resampling over test sentences.

Two sources of noise decide whether method A differs from baseline B on a metric:

- *Seeds* (training is random): each seed gives one corpus score; the mean over seeds gets a
  t-based confidence interval, and A vs B Welch's t-test (unequal variances, unpaired).
- *Test sentences* (the test set is a sample): paired bootstrap resampling (Koehn 2004), with
  sacrebleu's own statistics, scores and p-value for BLEU, chrF, chrF++ and TER
  (``sacrebleu.significance``), and resampled segment means for segment-level scorers, as
  ``comet-compare`` does. The seeds of a method are pooled per sentence: a resample draws test
  sentences, and each drawn sentence brings the outputs of every seed of both methods (their
  sacrebleu sufficient statistics summed, or their segment scores averaged). With one seed per
  side this is exactly sacrebleu's paired bootstrap test (``PairedTest(test_type="bs")``).
  Several directions are resampled within each direction (stratified), and the statistic is
  the mean over directions of the per-direction corpus scores, as MT papers average them.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cpo.report.metrics import SACREBLEU_METRICS, direction

DEFAULT_SAMPLES = 1000     # sacrebleu's default for its paired bootstrap test
DEFAULT_SEED = 12345       # sacrebleu's default SACREBLEU_SEED


@dataclass
class Summary:
    n: int
    mean: float
    std: float             # sample std (ddof=1); NaN with one value
    lo: float              # t-based confidence interval of the mean; NaN with one value
    hi: float


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean, sample std and the t-based ``level`` confidence interval of the mean (mean ± t·s/√n)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if x.size < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1)) * std / math.sqrt(x.size)
    return Summary(int(x.size), mean, std, mean - half, mean + half)


@dataclass
class Welch:
    diff: float            # mean(a) - mean(b)
    lo: float              # confidence interval of the difference (Welch-Satterthwaite degrees of freedom)
    hi: float
    p: float               # two-sided


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Welch | None:
    """Welch's t-test of mean(a) - mean(b); None with fewer than two values on a side or no spread at all."""
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size < 2 or b.size < 2 or (a.std() == 0 and b.std() == 0):
        return None
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=level)
    return Welch(float(a.mean() - b.mean()), float(ci.low), float(ci.high), float(res.pvalue))


# --------------------------------------------------------------------------- paired bootstrap


def sacrebleu_metric(name: str, tgt_lang: str):
    """The sacrebleu metric object behind a results key, set up exactly as cpo.mt.evaluation scores it."""
    from cpo.mt.evaluation import sacrebleu_metric as metric

    return metric(name, tgt_lang)


def directions_of(rows: Sequence[dict]) -> dict[tuple[str, str], list[int]]:
    """(src_lang, tgt_lang) -> row indices, in order of first appearance."""
    out: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        out.setdefault((r["src_lang"], r["tgt_lang"]), []).append(i)
    return out


class _Statistic:
    """Per-sentence material of one side for one metric and direction, and its score on a sample."""

    def __init__(self, name: str, runs: Sequence[Sequence[dict]], idx: list[int], tgt_lang: str):
        self.name = name
        if name in SACREBLEU_METRICS:
            self.metric = sacrebleu_metric(name, tgt_lang)
            per_run = []
            for rows in runs:
                hyps = [rows[i]["hypothesis"] for i in idx]
                refs = [rows[i]["reference"] for i in idx]
                per_run.append(np.asarray(self.metric._extract_corpus_statistics(hyps, [refs]), dtype=np.int64))
            pooled = np.sum(per_run, axis=0)  # sufficient statistics are sums: seeds add up per sentence
            self.full = float(self.metric._aggregate_and_compute(pooled.tolist()).score)
            self.stats = pooled.astype("float32")  # as sacrebleu's own test
        else:
            self.metric = None
            self.stats = np.mean([[float(rows[i]["scores"][name]) for i in idx] for rows in runs], axis=0)
            self.full = float(self.stats.mean())

    def resampled(self, idxs: np.ndarray) -> np.ndarray:
        if self.metric is None:
            return self.stats[idxs].mean(axis=1)
        return np.array([self.metric._compute_score_from_stats(s.sum(0)).score for s in self.stats[idxs]])


@dataclass
class Bootstrap:
    score: float           # the method's score on the whole test set (seeds pooled)
    base_score: float      # the baseline's
    diff: float            # score - base_score
    p: float               # two-sided, sacrebleu's formula
    lo: float              # percentile interval of the resampled differences at the given level
    hi: float
    win_rate: float        # share of resamples where the method is better (comet-compare's "wins")
    n_sentences: int


def _side(metric: str, runs: Sequence[Sequence[dict]], groups: dict, n_samples: int, seed: int,
          cache: dict | None) -> tuple[np.ndarray, float]:
    """(resampled scores, full score) of one side; the mean over directions of per-direction scores.

    The draws depend only on the seed and the direction sizes, so both sides of a comparison (and a
    baseline shared by several comparisons, hence ``cache``) see the same resampled sentences.
    """
    key = (metric, tuple(id(r) for r in runs), n_samples, seed)
    if cache is not None and key in cache:
        return cache[key]
    rng = np.random.default_rng(seed)
    resampled, full = [], []
    for (_, tgt), idx in groups.items():
        # Drawn per direction in order, as sacrebleu draws them: one direction, one seed per side
        # gives exactly sacrebleu's resamples.
        draws = rng.choice(len(idx), size=(n_samples, len(idx)), replace=True)
        st = _Statistic(metric, runs, idx, tgt)
        resampled.append(st.resampled(draws))
        full.append(st.full)
    out = (np.mean(resampled, axis=0), float(np.mean(full)))
    if cache is not None:
        cache[key] = out
    return out


def paired_bootstrap(runs: Sequence[Sequence[dict]], base_runs: Sequence[Sequence[dict]], metric: str,
                     n_samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED, level: float = 0.95,
                     cache: dict | None = None) -> Bootstrap:
    """Paired bootstrap of one metric between the seeds of a method and those of a baseline.

    ``runs`` and ``base_runs`` hold one list of test_translations rows per seed, all in the same
    sentence order (the caller checks that). ``metric`` is a sacrebleu metric name or a key of
    each row's ``scores``. One departure from sacrebleu: identical scores (a difference of exactly
    0) get p = 1, where sacrebleu's formula gives its smallest p-value to a system against itself.
    """
    from sacrebleu.significance import _compute_p_value

    groups = directions_of(base_runs[0])
    s, score = _side(metric, runs, groups, n_samples, seed, cache)
    bs, base = _side(metric, base_runs, groups, n_samples, seed, cache)
    sample_diffs = np.abs(s - bs)
    p = 1.0 if score == base else _compute_p_value(sample_diffs - sample_diffs.mean(), abs(score - base))
    d = s - bs
    lo, hi = np.quantile(d, [0.5 - level / 2, 0.5 + level / 2])
    better = d > 0 if direction(metric) == "higher" else d < 0
    return Bootstrap(score, base, score - base, float(p), float(lo), float(hi), float(better.mean()),
                     sum(len(i) for i in groups.values()))


def corpus_score(metric: str, runs: Sequence[Sequence[dict]], idx: list[int], tgt_lang: str) -> float:
    """The metric on sentences ``idx`` of one or more runs (several runs: seeds pooled per sentence)."""
    return _Statistic(metric, runs, idx, tgt_lang).full


def first_mismatch(rows: Sequence[dict], base_rows: Sequence[dict]) -> str | None:
    """Why two jobs' test translations cannot be paired sentence by sentence, or None when they can."""
    if len(rows) != len(base_rows):
        return f"{len(rows)} test sentences vs the baseline's {len(base_rows)}"
    for i, (r, b) in enumerate(zip(rows, base_rows), 1):
        for key in ("source", "reference", "src_lang", "tgt_lang"):
            if r[key] != b[key]:
                return f"row {i}: the {key} differs from the baseline's"
    return None
