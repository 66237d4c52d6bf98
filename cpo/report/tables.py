"""The report's tables, built once as cells and rendered as Markdown (report.md) or LaTeX (report.tex).

Cells are "mean ± std [lo, hi]" over seeds (t-based interval of the mean). Bold marks the best
mean of a column among the *selected* configurations only, and only in columns comparable across
losses; ▲/▼ mark a significant difference from the baseline (comparison.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cpo.report.analysis import Analysis, finite, verdict_of
from cpo.report.independence import MARK
from cpo.report.metrics import (VAL_TABLE, arrow, comparable_across_losses, direction, fmt, fmt_p, metric_label,
                                setting_label)

BETTER, WORSE, SELECTED = "▲", "▼", "★"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]]          # (row, column) cells in bold
    align: str                          # one of l/r per column

    def markdown(self) -> str:
        esc = [[c.replace("|", "\\|") for c in r] for r in self.rows]
        cells = [[f"**{c}**" if (i, k) in self.bold else c for k, c in enumerate(r)] for i, r in enumerate(esc)]
        rule = "|" + "|".join("---:" if a == "r" else "---" for a in self.align) + "|"
        lines = ["| " + " | ".join(self.header) + " |", rule]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])

    def latex(self, caption: str, label: str) -> str:
        rows = [[_tex(c, bold=(i, k) in self.bold) for k, c in enumerate(r)] for i, r in enumerate(self.rows)]
        # table* spans both columns of a two-column paper; a table wider than the text is scaled down to fit
        # (graphicx's \resizebox sees the natural width as \width), a narrower one keeps its size.
        return "\n".join([
            "\\begin{table*}[t]", "\\centering", "\\small",
            "\\resizebox{\\ifdim\\width>\\textwidth\\textwidth\\else\\width\\fi}{!}{%",
            f"\\begin{{tabular}}{{{self.align}}}", "\\toprule",
            " & ".join(_tex(h) for h in self.header) + " \\\\", "\\midrule",
            *[" & ".join(r) + " \\\\" for r in rows],
            "\\bottomrule", "\\end{tabular}}", f"\\caption{{{_tex(caption)}}}", f"\\label{{{label}}}",
            "\\end{table*}",
        ])


_TEX = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{", "}": "\\}",
        "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "±": "$\\pm$", "–": "--", "↑": "$\\uparrow$",
        "↓": "$\\downarrow$", "→": "$\\to$", "Δ": "$\\Delta$", BETTER: "$^{\\blacktriangle}$",
        WORSE: "$^{\\blacktriangledown}$", SELECTED: "$\\star$", MARK: "$^{\\dagger}$", "≥": "$\\geq$", "<": "$<$",
        ">": "$>$",
        "α": "$\\alpha$"}


def _tex(text: str, bold: bool = False) -> str:
    out = "".join(_TEX.get(ch, ch) for ch in str(text)).replace("`", "")
    return f"\\textbf{{{out}}}" if bold else out


def cell(row: pd.Series, metric: str, ci: bool = True) -> str:
    n = int(row.get(f"{metric}_n", 0) or 0)
    if n == 0:
        return "–"
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    text = f"{fmt(mean)} ± {fmt(std, mean)}" if finite(std) else f"{fmt(mean)}"
    if ci and finite(row[f"{metric}_lo"]):
        text += f" [{fmt(row[f'{metric}_lo'], mean)}, {fmt(row[f'{metric}_hi'], mean)}]"
    return text


def _best_rows(df: pd.DataFrame, metric: str) -> set[int]:
    """Positions of the best finite mean (ties: all); none with fewer than two or a non-comparable column."""
    if not comparable_across_losses(metric) or f"{metric}_mean" not in df:
        return set()
    vals = pd.to_numeric(df[f"{metric}_mean"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(vals)
    if ok.sum() < 2:
        return set()
    d = direction(metric)
    key = np.abs(vals - 1) if d == "one" else (-vals if d == "higher" else vals)
    best = np.nanmin(np.where(ok, key, np.nan))
    return {i for i in range(len(vals)) if ok[i] and np.isclose(key[i], best, rtol=1e-12, atol=0.0)}


def _grid_point(a: Analysis, row: pd.Series) -> str:
    """"learning rate 0.0001, beta 0.1": the tuned settings under readable names."""
    keys = [k for k in a.tune_keys if k in row.index and isinstance(row[k], str)]
    return ", ".join(setting_label(k, row[k]) for k in keys) or "–"


def _seeds(row: pd.Series) -> str:
    return str(row["runs"]) + (f" (+{row['failed']} failed)" if row["failed"] else "")


def _name(a: Analysis, method: str) -> str:
    return a.display(method) + (" (baseline)" if method == a.baseline else "")


def _head(a: Analysis, metric: str) -> str:
    """A metric's column head, marked † when it is the scorer that built some method's pairs."""
    return f"{metric_label(metric)} {arrow(metric)}" + (f" {MARK}" if a.same_scorer(metric) else "")


def selected_table(a: Analysis) -> Table:
    """Per method: its selected grid point, seeds, the selection metric and the test metrics after training."""
    df = a.selected.reset_index(drop=True)
    metrics = [f"test/{m}" for m in a.quality]
    sel = [a.select_by] if a.select_by else []
    header = ["method", "selected", "seeds"] + [_head(a, m) for m in sel + metrics]
    rows, bold = [], set()
    for i, r in df.iterrows():
        cells = [_name(a, r["method"]), _grid_point(a, r), _seeds(r)]
        cells += [cell(r, m, ci=False) for m in sel]
        for m in metrics:
            c = verdict_of(a, r["method"], m[len("test/"):])
            mark = {"better": f" {BETTER}", "worse": f" {WORSE}"}.get(c.verdict if c else "", "")
            cells.append(cell(r, m) + mark)
        rows.append(cells)
    for k, m in enumerate(sel + metrics, start=3):
        bold |= {(i, k) for i in _best_rows(df, m)}
    return Table(header, rows, bold, "llr" + "r" * (len(sel) + len(metrics)))


def significance_table(a: Analysis) -> Table:
    header = ["method", "metric", "mean (n)", "baseline (n)", "difference [CI]", "p seeds (Welch)",
              "p sentences (bootstrap)", "seed pairs (bootstrap)", "verdict"]
    rows = []
    for c in a.comparisons:
        diff = f"{c.diff:+.3g}" if finite(c.diff) else "–"
        if finite(c.diff_lo):
            diff += f" [{c.diff_lo:+.3g}, {c.diff_hi:+.3g}]"
        mark = f" {MARK}" if a.same_scorer(c.metric, c.method) else ""
        rows.append([a.display(c.method), metric_label(f"test/{c.metric}") + mark, f"{fmt(c.mean)} ({c.n})",
                     f"{fmt(c.base_mean)} ({c.n_base})", diff, fmt_p(c.p_seeds), fmt_p(c.p_bootstrap), c.seed_pairs,
                     f"{c.verdict} ({c.basis})"])
    return Table(header, rows, set(), "llrrrrrll")


def grid_table(a: Analysis) -> Table:
    """Every grid point: selection metric (★ on the selected point of each method), validation and test metrics."""
    df = a.grid
    selected = set(a.selected["config"])
    val = list(dict.fromkeys(m for m in [a.select_by, *VAL_TABLE] if m and f"{m}_mean" in df))
    metrics = val + [f"test/{m}" for m in a.quality]
    header = ["method", "grid point", "seeds"] + [_head(a, m) for m in metrics]
    rows = []
    for _, r in df.iterrows():
        mark = f" {SELECTED}" if r["config"] in selected else ""
        rows.append([a.display(r["method"]) + mark, _grid_point(a, r), _seeds(r)]
                    + [cell(r, m, ci=False) for m in metrics])
    return Table(header, rows, set(), "llr" + "r" * len(metrics))


def health_table(a: Analysis) -> Table | None:
    if not a.health:
        return None
    df = a.selected.reset_index(drop=True)
    metrics = [f"test/{m}" for m in a.health]
    rows = [[_name(a, r["method"]), str(r["runs"])] + [cell(r, m) for m in metrics] for _, r in df.iterrows()]
    bold = {(i, k) for k, m in enumerate(metrics, start=2) for i in _best_rows(df, m)}
    header = ["method", "seeds"] + [f"{metric_label(m)} {arrow(m)}" for m in metrics]
    return Table(header, rows, bold, "lr" + "r" * len(metrics))


def direction_table(a: Analysis) -> Table | None:
    if a.directions is None:
        return None
    d = a.directions
    metrics = list(dict.fromkeys(d["metric"]))
    rows = []
    for (method, direc), g in d.groupby(["method", "direction"], sort=False):
        by = g.set_index("metric")
        cells = []
        for m in metrics:
            if m not in by.index:
                cells.append("–")
                continue
            x = by.loc[m]
            spread = f" ± {fmt(x['std'], x['mean'])}" if finite(x["std"]) else ""
            cells.append(f"{fmt(x['mean'])}{spread} ({int(x['n'])})")
        rows.append([a.display(method), direc] + cells)
    return Table(["method", "direction"] + [f"{metric_label('test/' + m)} {arrow(m)}" for m in metrics], rows, set(),
                 "ll" + "r" * len(metrics))


def latex_document(a: Analysis, source: str) -> str:
    """report.tex: the selected-configuration and grid tables (booktabs; ▲▼ need amssymb; graphicx scales)."""
    mark = " Selected on the TEST split: the comparison is biased." if a.test_selected else ""
    how = (f"selected per method by the best mean {a.select_by} over seeds" if a.select_by
           else "one configuration per method")
    base = (f"; ▲/▼: significantly better/worse than {a.display(a.baseline)} at α = {a.alpha:g} (seeds and test "
            "sentences)" if a.baseline else "")
    if a.independence.metrics:
        base += f"; {MARK}: the scorer that built the training pairs (metric interference)"
    parts = [f"% Tables of the sweep report for {source}. Needs \\usepackage{{booktabs,amssymb,graphicx}}.", ""]
    few = f" {a.few_seeds_text()}" if a.few_seeds() else ""
    parts.append(selected_table(a).latex(
        f"Test-set results of each method's configuration, {how}. Mean ± std over seeds [{a.level:.0%} CI of the "
        f"mean, clipped to the metric's range]{base}; bold: best mean.{mark}{few}", "tab:selected"))
    caption = f"Every grid point: mean ± std over seeds; ★: the selected configuration of each method.{mark}"
    parts += ["", grid_table(a).latex(caption, "tab:grid")]
    return "\n".join(parts) + "\n"

