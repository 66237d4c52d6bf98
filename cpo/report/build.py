"""The report files: report.md, report.tex, report.csv (every grid point), significance.csv,
report.json (the manifest the notebook reads) and plots/*.png."""
from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from cpo.io import atomic_write_json, atomic_write_text
from cpo.report.analysis import Analysis
from cpo.report.comparison import comparisons_frame
from cpo.report.independence import MARK, independence_text
from cpo.report.loading import common_overrides
from cpo.report.metrics import metric_label
from cpo.report.tables import (BETTER, SELECTED, WORSE, direction_table, grid_table, health_table, latex_document,
                               selected_table, significance_table)


def protocol_text(a: Analysis) -> str:
    if a.test_selected:
        sel = (f"**Selected on the TEST split** (`select_by={a.select_by}`, allow_test_selection=true): every "
               "comparison on the test split below is biased in favour of the selected configurations.")
    elif a.select_by:
        sel = (f"Per method, the grid point with the best mean `{a.select_by}` over its seeds is selected "
               f"(validation split; {a.select_how}); the selected points are compared on the test split.")
    else:
        sel = "Each method has one configuration: nothing to select."
    refs = f" Validation translations were scored against: {', '.join(a.val_references)}." if a.val_references else ""
    base = (f" Baseline: **{a.display(a.baseline)}** (`{a.baseline}`)." if a.baseline
            else f" No significance tests: {a.baseline_note}.")
    text = sel + refs + base + f" Significance level α = {a.alpha:g}; intervals are {a.level:.0%}."
    independence = independence_text(a.independence, a.select_by, a.display)
    return text + ("\n\n" + independence if independence else "")


SIGNIFICANCE_TEXT = (
    "How significance is decided: a method is **better** or **worse** than the baseline on a metric only "
    "when the difference is significant at α against both sources of noise: seeds (Welch's t-test on the per-seed "
    "test scores) and test sentences (paired bootstrap resampling of the test set, {samples} resamples: "
    "sacrebleu's statistics and p-value for BLEU/chrF/chrF++/TER, resampled segment means for QE/COMET "
    "scorers, as comet-compare; the seeds of each method are pooled per sentence). With one seed per side, or "
    "without test translations, the verdict rests on the one test available, as stated. Otherwise: **no "
    "significant difference**, which is not evidence that the methods are equal. *Seed pairs*: sacrebleu's "
    "paired bootstrap test for each seed pair alone (same seed number), counted at α. {n_tests} tests at α "
    "without correction for multiple comparisons: about {expected:.1f} could come out significant by chance alone."
)


def render_markdown(a: Analysis, source: str, made: dict[str, str], skipped: dict[str, str], out_dir: Path,
                    samples: int) -> str:
    jobs = a.jobs
    ok, failed = [j for j in jobs if j.ok], [j for j in jobs if not j.ok]
    lines = [f"# Sweep report: `{source}`", ""]
    if a.test_selected:
        lines += ["> **Warning: configurations selected on the TEST split; the test comparison is biased.**", ""]
    lines.append(f"{len(jobs)} jobs: {len(ok)} completed, {len(failed)} failed; {len(a.grid)} grid points of "
                 f"{len(a.methods)} methods (a grid point = a job's overrides less seed and keys that do not change "
                 "the experiment; a method = a grid point less the tuned keys "
                 + ", ".join(f"`{k}`" for k in a.tune_keys) + ").")
    common = common_overrides(jobs)
    if common:
        lines += ["", "Common to every job: " + ", ".join(f"`{k}={v}`" for k, v in common.items()) + "."]
    lines += ["", protocol_text(a), ""]
    if not len(a.selected):
        lines += ["No completed jobs with metrics: nothing to compare.", ""]
    else:
        lines += ["## Selected configurations, test split", "", selected_table(a).markdown(), "",
                  f"Cells: mean ± std over seeds [{a.level:.0%} t-interval of the mean, clipped to the metric's "
                  "range: BLEU and chrF in [0, 100], rates in [0, 1]]; *seeds* counts completed jobs. "
                  f"{BETTER}/{WORSE}: significantly better/worse than the baseline (next section). Bold: best mean "
                  "among the selected configurations. ↑ higher is better, ↓ lower is better."]
        if a.few_seeds():
            lines += ["", f"**{a.few_seeds_text()}**"]
        notes = [f"- {a.display(m)}: {n}" for m, n in a.notes.items()]
        if notes:
            lines += ["", "Selection notes:", *notes]
        if a.baseline:
            n_tests = sum(c.verdict in ("better", "worse", "no significant difference") for c in a.comparisons)
            lines += ["", f"## Significance vs {a.display(a.baseline)}", "", significance_table(a).markdown(), "",
                      SIGNIFICANCE_TEXT.format(samples=samples, n_tests=n_tests, expected=n_tests * a.alpha)]
            verdicts = Counter(c.verdict for c in a.comparisons)
            lines += ["", "Verdicts: " + ", ".join(f"{v} {k}" for k, v in verdicts.items()) + "."]
        else:
            lines += ["", "## Significance", "", f"Not computed: {a.baseline_note}."]
        if (t := direction_table(a)) is not None:
            lines += ["", "## Per direction", "", t.markdown(), "",
                      "Recomputed from each job's test translations; `avg xx->en` / `avg en->xx`: the mean over those "
                      "directions per seed, then mean ± std (n) over seeds."]
        if (t := health_table(a)) is not None:
            lines += ["", "## Health of the translations (test split)", "", t.markdown(), "",
                      "Off-target language rate, source-copy rate and repetition rate (lower is better) and "
                      "hypothesis/reference length ratio (→1: closer to 1 is better): a degenerating translator "
                      "shows here while its loss still looks fine. Descriptive only: no significance test."]
        lines += ["", "## Every grid point", "", grid_table(a).markdown(), "",
                  f"{SELECTED}: the selected grid point of its method. Mean ± std (n seeds); no best marks here: "
                  "compare methods on the selected rows above, not on their best test cell."]
    lines += ["", "## Figures", ""]
    for name, p in made.items():
        rel = os.path.relpath(p, out_dir)
        lines += [f"- {name}: `{rel}` (vector: `{Path(rel).with_suffix('.pdf')}`)  ", f"  ![{name}]({rel})"]
    lines += [f"- {name}: not drawn: {why}" for name, why in skipped.items()]
    no_tr = [j for j in jobs if j.ok and j.translations is None]
    if no_tr:
        reasons = Counter(j.translations_note for j in no_tr)
        lines += ["", "## Jobs without test translations (no paired bootstrap for them)", ""]
        for why, n in reasons.items():
            example = next(j.name for j in no_tr if j.translations_note == why)
            lines.append(f"- {n} job(s): {why} (e.g. `{example}`)")
    lines += ["", "## Failed jobs", ""]
    lines += [f"- `{j.name}` ({j.label}, seed {j.seed}): {j.error}" for j in failed] or ["None."]
    lines += ["", "## Grid points and their job folders", ""]
    for label in dict.fromkeys(j.label for j in jobs):
        members = [j for j in jobs if j.label == label]
        full = ", ".join(f"{k}={v}" for k, v in members[0].config_overrides.items()) or "(defaults)"
        lines.append(f"- `{label}`: {full}; jobs: " + ", ".join(f"`{j.name}`" for j in members))
    return "\n".join(lines) + "\n"


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item"):  # numpy scalars
        return _clean(x.item())
    return x


def write_report(a: Analysis, out_dir: str | os.PathLike, source: str | None = None, plots: bool = True,
                 samples: int = 1000, sweep_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write every report file into ``out_dir``; returns the manifest (also report.json). ``sweep_dir``: the
    local sweep folder the jobs came from (the notebook analyses it again), default ``out_dir``."""
    out_dir = Path(out_dir)
    source = source or str(out_dir)
    if plots:
        from cpo.report.figures import make_figures

        made, skipped = make_figures(a, out_dir / "plots")  # also removes figures an earlier report drew
    else:
        made, skipped = {}, {"figures": "plots=false"}
    grid = a.grid.copy()
    if len(grid):
        grid.insert(2, "method_name", [a.display(m) for m in grid["method"]])
        grid.insert(3, "selected", grid["config"].isin(set(a.selected["config"])))
    atomic_write_text(out_dir / "report.csv", grid.to_csv(index=False))
    atomic_write_text(out_dir / "significance.csv", comparisons_frame(a.comparisons).to_csv(index=False))
    if len(a.selected):
        atomic_write_text(out_dir / "report.tex", latex_document(a, source))
    else:
        (out_dir / "report.tex").unlink(missing_ok=True)
    chosen = dict(zip(a.selected["method"], a.selected["config"])) if len(a.selected) else {}
    manifest = {
        "source": source,
        "sweep_dir": None if source.startswith("wandb:") else str(Path(sweep_dir or out_dir).resolve()),
        "jobs": len(a.jobs),
        "completed": sum(j.ok for j in a.jobs),
        "failed": [{"job": j.name, "config": j.label, "seed": j.seed, "error": j.error} for j in a.jobs if not j.ok],
        "protocol": {"select_by": a.select_by, "select_how": a.select_how, "test_selected": a.test_selected,
                     "alpha": a.alpha, "tune_keys": list(a.tune_keys), "baseline": a.baseline,
                     "baseline_name": a.display(a.baseline) if a.baseline else None, "baseline_note": a.baseline_note,
                     "bootstrap_samples": samples},
        "methods": {m.label: {"name": m.display, "color": m.color, "loss": m.loss, "selected": chosen.get(m.label),
                              "note": a.notes.get(m.label, "")} for m in a.methods.values()},
        "metrics": {"quality": a.quality, "health": a.health},
        "comparisons": [_clean({**c.__dict__, "same_scorer": a.same_scorer(c.metric, c.method)})
                        for c in a.comparisons],
        "metric_independence": {**a.independence.as_dict(),
                                "select_by_same_scorer": bool(a.select_by and a.same_scorer(a.select_by))},
        "verdict_sentences": verdict_sentences(a),
        "no_translations": [{"job": j.name, "why": j.translations_note}
                            for j in a.jobs if j.ok and j.translations is None],
        "plots": {k: os.path.relpath(v, out_dir) for k, v in made.items()},
        "plots_pdf": {k: os.path.relpath(Path(v).with_suffix(".pdf"), out_dir) for k, v in made.items()},
        "few_seeds": a.few_seeds(),
        "skipped_plots": skipped,
    }
    atomic_write_json(out_dir / "report.json", _clean(manifest))
    atomic_write_text(out_dir / "report.md", render_markdown(a, source, made, skipped, out_dir, samples))
    return manifest


def verdict_sentences(a: Analysis) -> list[str]:
    """"CPO vs SFT (preferred) on BLEU: worse (-0.81; Welch p=0.002, bootstrap p=0.001; seeds and test sentences)."""
    out = []
    for c in a.comparisons:
        ps = [f"Welch p={c.p_seeds:.3g}" if c.p_seeds is not None else "",
              f"bootstrap p={c.p_bootstrap:.3g}" if c.p_bootstrap is not None else ""]
        diff = f"{c.diff:+.3g}" if math.isfinite(c.diff) else ""
        detail = "; ".join(x for x in [diff, ", ".join(p for p in ps if p), c.basis] if x)
        name = metric_label("test/" + c.metric)
        same = f" {MARK} rests on the scorer that built the pairs (metric interference)" \
            if a.same_scorer(c.metric, c.method) else ""
        out.append(f"{a.display(c.method)} vs {a.display(a.baseline)} on {name}: {c.verdict} ({detail}){same}")
    return out
