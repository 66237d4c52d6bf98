"""Figures for a paper: one colour and display name per method (metrics.METHODS), points with
confidence intervals clipped to each metric's range (never bars on a cut axis), seed counts shown, and
training curves of loss-independent quantities (log-probs, validation scores) instead of loss values of
different objectives on one axis. Every figure is written as PNG and, beside it, as PDF for a paper.

In curves the baseline is drawn first, wide and pale, and every other method on top of it with a marker
of its own, so a method that coincides with the baseline stays visible; a series with one point is a
marker, not a line; a panel where every method is the same constant is left out and named in the title."""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cpo.io import atomic_write_bytes
from cpo.report.analysis import Analysis, finite
from cpo.report.comparison import selected_jobs
from cpo.report.metrics import arrow, key_label, metric_label, metric_range

# Log-probs of the chosen and rejected translations are the same quantities under every loss; loss
# values, rewards (beta-scaled) and nll_loss (its target is the reference for sft_ref) are not. SFT logs the
# log-probs of the one side it trains on: logps/chosen, or logps/reference for SFT on the references.
TRAIN_CURVES = ("train/logps/accuracies", "train/logps/margins", "train/logps/chosen", "train/logps/reference")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
VAL_CURVES = ("val/logps/accuracies", "val/logps/margins", "val/logps/chosen", "val/chrf", "val/bleu")
HEALTH_CURVES = ("val/off_target", "val/copy_rate", "val/repetition", "val/length_ratio")


def save(fig, path: Path) -> str:
    """``path`` (PNG) and the same figure as PDF beside it; returns the PNG's path."""
    for fmt, target in (("pdf", path.with_suffix(".pdf")), ("png", path)):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=150, bbox_inches="tight")
        atomic_write_bytes(target, buf.getvalue())
    return str(path)


def _few_seeds(a: Analysis) -> str:
    few = a.few_seeds()
    return f"\nfewer than 3 seeds ({', '.join(few)}): their intervals are not meaningful" if few else ""


def _figure(n_panels: int, width: float = 4.2, height: float = 3.3, ncols: int | None = None):
    from matplotlib.figure import Figure  # no pyplot: no global state, always the Agg canvas

    ncols = ncols or min(n_panels, 3)
    fig = Figure(figsize=(width * ncols, height * math.ceil(n_panels / ncols)), layout="constrained")
    axes = fig.subplots(math.ceil(n_panels / ncols), ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes[:n_panels])


def _legend(fig, axes, ncols: int = 4) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), ncols), fontsize="small",
                   frameon=False)


def _seeds(ax, x: float, y: float, n: int, above: bool = False) -> None:
    """The seed count beside a point: every point of every figure says how many seeds it averages."""
    ax.annotate(f"n={int(n)}", (x, y), xytext=(0, 4) if above else (4, -10), textcoords="offset points",
                ha="center" if above else "left", va="bottom" if above else "baseline", fontsize="x-small",
                color="dimgray")


def _title(fig, text: str) -> None:
    fig.suptitle(text, fontsize="medium")


def _flat(df: pd.DataFrame, m: str) -> bool:
    """The same value with no spread for every method: a panel would show nothing."""
    vals = pd.to_numeric(df[f"{m}_mean"], errors="coerce").dropna()
    spread = pd.to_numeric(df[f"{m}_std"], errors="coerce").fillna(0)
    return vals.nunique() <= 1 and bool((spread == 0).all())


def scores_figure(a: Analysis):
    """Each selected method's test score per metric: mean over seeds with its CI, n seeds written beside."""
    metrics = [f"test/{m}" for m in a.quality + a.health]
    df = a.selected.reset_index(drop=True)
    metrics = [m for m in metrics if f"{m}_mean" in df and df[f"{m}_mean"].apply(finite).any()
               # e.g. no empty output anywhere: the table says it
               and not (m[len("test/"):] in a.health and _flat(df, m))]
    if not metrics:
        return None
    fig, axes = _figure(len(metrics), width=max(3.2, 0.7 * len(df) + 1.6))
    x = np.arange(len(df))
    for ax, m in zip(axes, metrics):
        for i, r in df.iterrows():
            meth = a.methods[r["method"]]
            mean, lo, hi = r[f"{m}_mean"], r[f"{m}_lo"], r[f"{m}_hi"]
            if not finite(mean):
                continue
            err = [[mean - lo], [hi - mean]] if finite(lo) else None
            ax.errorbar([i], [mean], yerr=err, fmt="o", color=meth.color, capsize=4, ms=6, label=meth.display)
            _seeds(ax, i, hi if finite(hi) else mean, r[f"{m}_n"], above=True)
        if a.baseline is not None and a.baseline in set(df["method"]):
            b = df[df["method"] == a.baseline].iloc[0]
            if finite(b[f"{m}_mean"]):
                color = a.methods[a.baseline].color
                ax.axhline(b[f"{m}_mean"], color=color, lw=0.8, ls="--", zorder=0)
                if finite(b[f"{m}_lo"]):
                    ax.axhspan(b[f"{m}_lo"], b[f"{m}_hi"], color=color, alpha=0.10, lw=0, zorder=0)
        ax.set_xticks(x, [a.methods[r].display for r in df["method"]], rotation=30 if len(df) > 3 else 0,
                      ha="right" if len(df) > 3 else "center", fontsize="small")
        ax.margins(x=0.15, y=0.15)
        ax.set_title(f"{metric_label(m)} {arrow(m)}", fontsize="medium")
        ax.grid(alpha=0.3, axis="y")
    base = f"; dashed: the baseline {a.display(a.baseline)}" if a.baseline else ""
    sel = " — SELECTED ON TEST (biased)" if a.test_selected else ""
    _title(fig, f"Test split, each method's selected configuration: mean over seeds, {a.level:.0%} CI{base}{sel}"
           + _few_seeds(a))
    return fig


def _numeric(values: Sequence) -> np.ndarray | None:
    x = pd.to_numeric(pd.Series(list(values)), errors="coerce").to_numpy(dtype=float)
    return x if np.isfinite(x).all() else None


def grid_figure(a: Analysis):
    """Per method with several grid points: the selection metric against the first tuned key that
    varies, one line per setting of the others; the selected point is starred."""
    m = a.select_by
    if not m or f"{m}_mean" not in a.grid:
        return None
    panels = []
    for label, meth in a.methods.items():
        rows = a.grid[(a.grid["method"] == label) & a.grid[f"{m}_mean"].apply(finite)]
        keys = [k for k in a.tune_keys if k in rows and rows[k].nunique(dropna=True) > 1]
        if len(rows) > 1 and keys:
            panels.append((meth, rows, keys))
    if not panels:
        return None
    fig, axes = _figure(len(panels))
    chosen = set(a.selected["config"])
    styles = ["-", "--", ":", "-."]
    for ax, (meth, rows, keys) in zip(axes, panels):
        xkey, others = keys[0], keys[1:]
        families = list(rows.groupby(others, sort=False)) if others else [((), rows)]
        for n, (fam, g) in enumerate(families):
            fam = fam if isinstance(fam, tuple) else (fam,)
            xs = _numeric(g[xkey])
            order = np.argsort(xs) if xs is not None else np.arange(len(g))
            g = g.iloc[order]
            x = xs[order] if xs is not None else np.arange(len(g), dtype=float)
            # Families side by side, not on top of each other: a small dodge (multiplicative on a log axis).
            shift = 0.06 * (n - (len(families) - 1) / 2)
            x = x * (1 + shift) if xs is not None and np.all(xs > 0) else x + shift
            y, lo, hi = (g[f"{m}_{s}"].to_numpy(dtype=float) for s in ("mean", "lo", "hi"))
            err = np.vstack([np.where(np.isfinite(lo), y - lo, 0), np.where(np.isfinite(hi), hi - y, 0)])
            name = ", ".join(f"{key_label(k)} {v}" for k, v in zip(others, fam)) or meth.display
            ax.errorbar(x, y, yerr=err, color=meth.color, ls=styles[n % 4], marker="o", ms=4, capsize=3, label=name)
            for xi, yi, c, k in zip(x, y, g["config"], g[f"{m}_n"]):
                if c in chosen:
                    ax.plot([xi], [yi], marker="*", ms=14, color=meth.color, mec="black", zorder=5)
                _seeds(ax, xi, yi, k)
        allx = _numeric(rows[xkey])
        if allx is not None and np.all(allx > 0):
            ax.set_xscale("log")
            ticks = sorted(set(allx))
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        else:
            ax.set_xticks(range(len(rows[xkey].unique())), list(rows[xkey].unique()))
        ax.margins(x=0.08)
        ax.set_xlabel(key_label(xkey))
        ax.set_title(meth.display, fontsize="medium", color=meth.color)
        ax.grid(alpha=0.3)
        if others:
            ax.legend(fontsize="x-small")
    _title(fig, f"{metric_label(m)} {arrow(m)} over each method's grid (mean over seeds, {a.level:.0%} CI; "
                f"★ selected){_few_seeds(a)}")
    return fig


def seed_band(curves: Sequence[pd.DataFrame], metric: str, level: float = 0.95):
    """(steps, mean, lo, hi, n seeds) of ``metric`` over seeds, each seed interpolated onto the steps any
    seed logged inside the range common to all; the band is the t-based CI of the mean (NaN for one seed)."""
    from scipy import stats

    series = []
    for c in curves:
        if c is not None and metric in c.columns:
            s = c[["step", metric]].dropna().groupby("step")[metric].mean().sort_index()
            if len(s):
                series.append(s)
    if not series:
        return None
    lo, hi = max(s.index.min() for s in series), min(s.index.max() for s in series)
    if lo > hi:  # seeds do not overlap: the longest one alone
        series = [max(series, key=len)]
        lo, hi = series[0].index.min(), series[0].index.max()
    grid = np.unique(np.concatenate([s.index.to_numpy(dtype=float) for s in series]))
    grid = grid[(grid >= lo) & (grid <= hi)]
    ys = np.vstack([np.interp(grid, s.index.to_numpy(dtype=float), s.to_numpy(dtype=float)) for s in series])
    mean = ys.mean(axis=0)
    if len(series) < 2:
        return grid, mean, np.full(grid.shape, np.nan), np.full(grid.shape, np.nan), 1
    half = stats.t.ppf(0.5 + level / 2, len(series) - 1) * ys.std(axis=0, ddof=1) / math.sqrt(len(series))
    lo, hi = metric_range(metric)  # the band stays inside the metric's range (a rate near 0 never goes below 0)
    return grid, mean, np.clip(mean - half, lo, hi), np.clip(mean + half, lo, hi), len(series)


def _constant(bands: dict) -> float | None:
    """The one value every method's curve takes at every step, with no spread; None otherwise."""
    values = set()
    for band in bands.values():
        if band is not None:
            _, mean, lo, hi, _ = band
            values |= set(np.round(mean, 12)) | {v for v in np.round(np.concatenate([lo, hi]), 12) if np.isfinite(v)}
    return values.pop() if len(values) == 1 else None


def curves_figure(a: Analysis, metrics: Sequence[str], title: str):
    """Mean over seeds with its CI band per selected method, for each metric vs step."""
    curves = {r["method"]: [j.curve for j in selected_jobs(a.jobs, r["config"]) if j.curve is not None]
              for _, r in a.selected.iterrows()}
    # The baseline first (underneath), the others drawn over it: a curve equal to the baseline's stays visible.
    order = sorted(curves, key=lambda meth: meth != a.baseline)
    data = {m: {meth: seed_band(curves[meth], m, a.level) for meth in order} for m in metrics}
    metrics = [m for m in metrics if any(v is not None for v in data[m].values())]
    flat = {m: c for m in metrics if (c := _constant(data[m])) is not None and len(a.selected) > 1}
    metrics = [m for m in metrics if m not in flat]
    if not metrics:
        return None
    fig, axes = _figure(len(metrics))
    for ax, m in zip(axes, metrics):
        for k, (meth, band) in enumerate(data[m].items()):
            if band is None:
                continue
            x, mean, lo, hi, n = band
            style = a.methods[meth]
            base = meth == a.baseline
            label = f"{style.display} (n={n}" + (", one point)" if len(x) == 1 else ")")
            ax.plot(x, mean, color=style.color, label=label, marker=MARKERS[k % len(MARKERS)],
                    ms=7 if base else 4, markevery=max(1, len(x) // 12), ls="none" if len(x) == 1 else "-",
                    lw=4 if base else 1.5, alpha=0.45 if base else 1.0, zorder=2 if base else 3 + k)
            if n > 1:
                ax.fill_between(x, lo, hi, color=style.color, alpha=0.18, linewidth=0)
        missing = [a.display(k) for k, v in data[m].items() if v is None]
        if missing:  # e.g. SFT logs no train/logps/margins: say so rather than leave the reader guessing
            ax.text(0.01, 0.01, "not logged by: " + ", ".join(missing), transform=ax.transAxes, fontsize="x-small",
                    color="dimgray")
        ax.set_title(f"{m} {arrow(m)}", fontsize="medium")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    same = "; ".join(f"{m} = {v:g} for every method at every step (not drawn)" for m, v in flat.items())
    _title(fig, f"{title}, each method's selected configuration (mean over seeds, {a.level:.0%} CI band)"
           + (f"\n{same}" if same else ""))
    _legend(fig, axes)
    return fig


def beta_figure(a: Analysis):
    """When beta tells methods apart (it is not tuned): the selection metric and test metrics vs beta."""
    key = next((k for k in ("beta", "loss.beta")
                if k not in a.tune_keys and k in a.selected and a.selected[k].nunique() > 1), None)
    if key is None:
        return None
    df = a.selected.copy()
    df["_x"] = pd.to_numeric(df[key], errors="coerce")
    df = df[np.isfinite(df["_x"])].sort_values("_x")
    metrics = [m for m in [a.select_by] + [f"test/{q}" for q in a.quality] if m and f"{m}_mean" in df]
    if df["_x"].nunique() < 2 or not metrics:
        return None
    fig, axes = _figure(len(metrics))
    for ax, m in zip(axes, metrics):
        y, lo, hi = (df[f"{m}_{s}"].to_numpy(dtype=float) for s in ("mean", "lo", "hi"))
        err = np.vstack([np.where(np.isfinite(lo), y - lo, 0), np.where(np.isfinite(hi), hi - y, 0)])
        ax.errorbar(df["_x"], y, yerr=err, marker="o", capsize=3, color="#1f77b4")
        for xi, yi, n in zip(df["_x"], y, df[f"{m}_n"]):
            _seeds(ax, xi, yi, n)
        if (df["_x"] > 0).all():
            ax.set_xscale("log")
            ax.set_xticks(list(df["_x"]), [f"{v:g}" for v in df["_x"]])
            ax.minorticks_off()
        ax.set_xlabel(key_label(key))
        ax.set_title(f"{metric_label(m)} {arrow(m)}", fontsize="medium")
        ax.grid(alpha=0.3)
    _title(fig, f"Metrics vs {key}, each at its selected setting (mean over seeds, {a.level:.0%} CI)")
    return fig


def make_figures(a: Analysis, plot_dir: str | os.PathLike) -> tuple[dict[str, str], dict[str, str]]:
    """Write the figures (PNG, and PDF beside each); returns ({figure: PNG file}, {figure: why it was not drawn}).
    A figure not drawn this
    time leaves no file of an earlier report behind."""
    plot_dir = Path(plot_dir)
    val_curves = list(dict.fromkeys([m for m in (a.select_by,) if m.startswith("val/")] + list(VAL_CURVES)))
    specs = {
        "test metrics": ("test_metrics.png", lambda: scores_figure(a),
                         "no test metrics (evaluate.before_after=false?)"),
        "validation grid": ("grid.png", lambda: grid_figure(a),
                            "no method has several grid points with the selection metric"),
        "training curves": ("curves_train.png", lambda: curves_figure(a, TRAIN_CURVES, "Training curves"),
                            "no train/logps/* in the jobs' csv/metrics.csv (logger=none?)"),
        "validation curves": ("curves_val.png", lambda: curves_figure(a, val_curves, "Validation curves"),
                              "no val/* metrics in the jobs' csv/metrics.csv"),
        "health curves": ("curves_health.png", lambda: curves_figure(a, HEALTH_CURVES, "Health at validation"),
                          "no val/ health checks (off_target, copy_rate, ...) in the jobs' csv/metrics.csv"),
        "metrics vs beta": ("beta.png", lambda: beta_figure(a), "beta is tuned per method or does not vary"),
    }
    made, skipped = {}, {}
    for name, (file, draw, why) in specs.items():
        fig = draw() if len(a.selected) else None
        if fig is None:
            skipped[name] = why if len(a.selected) else "no completed jobs"
            (plot_dir / file).unlink(missing_ok=True)
            (plot_dir / file).with_suffix(".pdf").unlink(missing_ok=True)
        else:
            made[name] = save(fig, plot_dir / file)
    return made, skipped
