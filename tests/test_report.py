"""cpo.report and scripts/compare.py on hand-made sweeps (report_fixtures.py), and notebooks/ablations.ipynb
headless."""
from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from cpo import report
from report_fixtures import PROTOCOL, make_protocol_sweep, make_test_rows, translations

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = 100  # bootstrap resamples in tests (the default, 1000, is tested against sacrebleu below)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_protocol_sweep(tmp_path_factory.mktemp("protocol") / "sweep")


@pytest.fixture(scope="module")
def analysis(sweep):
    return report.analyze(report.load_sweep(sweep), bootstrap_samples=FAST)


@pytest.fixture(scope="module")
def written(sweep, analysis) -> dict:
    """The report files of the protocol sweep, written once (figures take seconds)."""
    return report.write_report(analysis, sweep, samples=FAST)


def copy_of(sweep: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "sweep"
    shutil.copytree(sweep, dst, ignore=shutil.ignore_patterns("plots", "report*", "significance.csv"))
    return dst


def _is_png(path: Path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG_MAGIC and len(data) > 5000


# --------------------------------------------------------------------------- loading, grid, methods


def test_load_sweep_jobs_translations_and_failed_job(sweep):
    jobs = report.load_sweep(sweep)
    assert len(jobs) == 22 and sum(j.ok for j in jobs) == 21
    bad = jobs[-1]
    assert not bad.ok and "no results.json" in bad.error and "CUDA out of memory" in bad.error
    assert jobs[0].label == "loss=sft,optim.lr=0.0001" and jobs[6].label == "loss=cpo,optim.lr=0.0001,beta=0.1"
    assert len(jobs[0].translations) == 40 and jobs[0].translations[0]["scores"]["demo_qe"] >= 0
    assert report.common_overrides(jobs) == {"trainer.max_steps": "20"}
    assert "trainer.val_check_interval" not in jobs[0].config_overrides


def test_unreadable_or_absent_translations_are_a_note_not_a_crash(sweep, tmp_path):
    s = copy_of(sweep, tmp_path)
    (s / "0_loss=sft,optim.lr=0.0001,seed=1" / "test_translations.jsonl").write_text('{"source": "a"}\n')
    (s / "1_loss=sft,optim.lr=0.0001,seed=2" / "test_translations.jsonl").unlink()
    (s / "1_loss=sft,optim.lr=0.0001,seed=2" / "test_hypotheses.txt").write_text("x\n")
    jobs = report.load_sweep(s)
    assert (jobs[0].ok and jobs[0].translations is None
            and "test_translations.jsonl:1: field 'reference'" in jobs[0].translations_note)
    assert jobs[1].translations is None and "only test_hypotheses.txt" in jobs[1].translations_note


def test_grid_aggregates_seeds_with_t_intervals(analysis):
    g = analysis.grid.set_index("config")
    row = g.loc["loss=cpo,optim.lr=0.001,beta=0.5"]
    assert row["runs"] == 3 and row["failed"] == 1 and row["seeds"] == "1,2,3" and row["method"] == "loss=cpo"
    xs = np.array([0.86 - 0.01, 0.86, 0.86 + 0.01])
    assert (row["val/demo_qe_mean"] == pytest.approx(xs.mean())
            and row["val/demo_qe_std"] == pytest.approx(xs.std(ddof=1)))
    lo, hi = sps.t.interval(0.95, 2, loc=xs.mean(), scale=sps.sem(xs))
    assert (row["val/demo_qe_lo"], row["val/demo_qe_hi"]) == (pytest.approx(lo), pytest.approx(hi))
    bleu = [j.results["after"]["bleu"] for j in analysis.jobs if j.ok and j.label == "loss=cpo,optim.lr=0.001,beta=0.5"]
    assert row["test/bleu_mean"] == pytest.approx(np.mean(bleu)) and row["test/bleu_n"] == 3
    assert row["delta/bleu_mean"] == pytest.approx(np.mean(bleu) - 20.0)


def test_methods_have_one_name_and_colour(analysis):
    m = analysis.methods
    assert list(m) == ["loss=sft", "loss=cpo", "loss=dpo"]
    assert [x.display for x in m.values()] == ["SFT (preferred)", "CPO", "DPO"]
    assert m["loss=cpo"].color == report.METHODS["cpo"][1]
    assert m["loss=sft"].configs == ["loss=sft,optim.lr=0.0001", "loss=sft,optim.lr=0.001"]
    # A method that is not the loss alone: named by the loss and the key that tells it apart, with its own colour.
    from cpo.report.selection import display_name

    assert display_name({"data.negatives": "noised"}, "cpo") == "CPO (negatives noised)"
    assert display_name({"loss": "sft_ref"}, None) == "SFT (reference)"


def test_a_factor_that_is_not_tuned_makes_the_methods(tmp_path):
    """beta_sweep's shape: beta is what is compared (tune_keys=[optim.lr]); each beta at its best learning rate."""
    from cpo.report.figures import beta_figure

    s = make_protocol_sweep(tmp_path / "beta", {"cpo": PROTOCOL["cpo"]}, failed=False)
    a = report.analyze(report.load_sweep(s), tune_keys=["optim.lr"], baseline="0.1", bootstrap_samples=10)
    assert {k: m.display for k, m in a.methods.items()} == {"beta=0.1": "CPO (beta 0.1)", "beta=0.5": "CPO (beta 0.5)"}
    assert a.baseline == "beta=0.1" and len({m.color for m in a.methods.values()}) == 2
    assert dict(zip(a.selected["method"], a.selected["config"])) == {"beta=0.1": "optim.lr=0.0001,beta=0.1",
                                                                    "beta=0.5": "optim.lr=0.0001,beta=0.5"}
    assert (beta_figure(a) is not None
            and beta_figure(analysis_of_tuned := report.analyze(a.jobs, bootstrap_samples=10)) is None)
    assert list(analysis_of_tuned.methods) == ["loss=cpo"]   # with beta tuned, one method: CPO


# --------------------------------------------------------------------------- selection


def test_selection_is_the_best_validation_mean_per_method(analysis):
    assert analysis.select_by == "val/demo_qe" and analysis.select_how.startswith("auto")
    assert dict(zip(analysis.selected["method"], analysis.selected["config"])) == {
        "loss=sft": "loss=sft,optim.lr=0.001", "loss=cpo": "loss=cpo,optim.lr=0.0001,beta=0.1",
        "loss=dpo": "loss=dpo,optim.lr=0.0001,beta=0.1"}
    assert analysis.notes["loss=cpo"] == ("learning rate 0.0001 is the smallest value tried; "
                                          "beta 0.1 is the smallest value tried; "
                                          "the optimum may lie outside the grid; "
                                          "not considered, a seed failed: loss=cpo,optim.lr=0.001,beta=0.5")
    assert analysis.notes["loss=dpo"] == "its only grid point"


def test_selection_ties_go_to_more_seeds_then_grid_order():
    from cpo.report.selection import Method, select

    grid = pd.DataFrame({"config": ["a", "b", "c"], "method": ["m"] * 3, "runs": [2, 3, 3], "optim.lr": ["1", "2", "3"],
                         "val/x_mean": [0.5, 0.5, 0.5]})
    sel, _ = select(grid, "val/x", {"m": Method("m", "M", "#000", None, ["a", "b", "c"])})
    assert list(sel["config"]) == ["b"]
    low = grid.assign(**{"val/nll_loss_mean": [0.3, 0.2, 0.4]})
    assert list(select(low, "val/nll_loss",
                       {"m": Method("m", "M", "#000", None)})[0]["config"]) == ["b"]  # lower is better


def test_select_by_auto_falls_back_and_test_metrics_are_refused(sweep, analysis):
    from cpo.report.selection import resolve_select_by

    no_qe = analysis.grid.drop(columns=[c for c in analysis.grid if c.startswith("val/demo_qe")])
    assert resolve_select_by("auto", no_qe)[0] == "val/chrf"
    assert resolve_select_by("chrf", analysis.grid) == ("val/chrf", "given")
    with pytest.raises(report.SelectionError,
                       match="select_by=test/bleu is a test-split metric: selecting on the test split biases"):
        resolve_select_by("test/bleu", analysis.grid)
    with pytest.raises(report.SelectionError,
                       match=r"select_by=val/comet: no job logged val/comet; give one of val/bleu"):
        resolve_select_by("val/comet", analysis.grid)
    a = report.analyze(report.load_sweep(sweep), select_by="test/bleu", allow_test_selection=True,
                       bootstrap_samples=FAST)
    assert a.test_selected and a.select_by == "test/bleu"
    md = report.render_markdown(a, "s", {}, {}, sweep, FAST)
    assert "Warning: configurations selected on the TEST split" in md and "**Selected on the TEST split**" in md
    from cpo.report.tables import latex_document

    assert latex_document(a, "s").count("Selected on the TEST split") == 2  # both tables say so


# --------------------------------------------------------------------------- statistics


def test_summary_and_welch_match_scipy():
    a, b = [94.2, 94.8, 94.5, 94.1, 94.9], [95.3, 95.1, 95.6, 95.2, 95.3]
    s = report.summarize(a)
    lo, hi = sps.t.interval(0.95, 4, loc=np.mean(a), scale=sps.sem(a))
    assert (s.n, s.mean, s.std) == (5, pytest.approx(np.mean(a)), pytest.approx(np.std(a, ddof=1)))
    assert (s.lo, s.hi) == (pytest.approx(lo), pytest.approx(hi))
    w = report.welch(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    assert w.p == pytest.approx(ref.pvalue) and w.diff == pytest.approx(np.mean(a) - np.mean(b)) and w.hi < 0
    assert report.welch([1.0], b) is None and report.welch([1.0, 1.0], [1.0, 1.0]) is None
    assert math.isnan(report.summarize([3.0]).std)


def _sacrebleu_paired_test(hyps, base_hyps, refs, metric):
    """sacrebleu's own PairedTest (paired bootstrap, SACREBLEU_SEED's default 12345): (p, score difference)."""
    from sacrebleu.significance import PairedTest

    from cpo.report.stats import sacrebleu_metric

    _, scores = PairedTest([("baseline", base_hyps), ("system", hyps)], {metric: sacrebleu_metric(metric, "en")},
                           [refs], test_type="bs", n_samples=1000)()
    base, system = scores[[k for k in scores if k != "System"][0]]
    return system.p_value, system.score - base.score


@pytest.mark.parametrize("metric", ["bleu", "chrf", "ter"])
def test_paired_bootstrap_is_sacrebleus_for_one_seed(metric):
    rows = make_test_rows()
    a, b = translations(rows, 0.20, 1, "x"), translations(rows, 0.28, 1, "y")
    mine = report.paired_bootstrap([a], [b], metric)
    hyps = [[r["hypothesis"] for r in x] for x in (a, b)]
    p, diff = _sacrebleu_paired_test(hyps[0], hyps[1], [r["reference"] for r in rows], metric)
    assert mine.p == p and mine.diff == pytest.approx(diff)
    # a system against itself: no difference (sacrebleu says p=0.001)
    assert report.paired_bootstrap([a], [a], metric).p == 1.0


def test_paired_bootstrap_pools_seeds_per_sentence_and_resamples_segment_means():
    rows = make_test_rows()
    a1, a2 = translations(rows, 0.2, 1, "x"), translations(rows, 0.2, 2, "x")
    b1, b2 = translations(rows, 0.3, 1, "y"), translations(rows, 0.3, 2, "y")
    pooled = report.paired_bootstrap([a1, a2], [b1, b2], "bleu", n_samples=FAST)
    # Pooled BLEU = BLEU of both seeds' outputs as one corpus (sufficient statistics add up).
    from sacrebleu.metrics import BLEU

    cat = lambda *rs: [r["hypothesis"] for x in rs for r in x]  # noqa: E731
    assert pooled.score == pytest.approx(BLEU().corpus_score(cat(a1, a2), [[r["reference"] for r in rows] * 2]).score)
    # Segment scorer: means of per-sentence seed means over the same resampled sentences, p by sacrebleu's formula.
    seg = report.paired_bootstrap([a1, a2], [b1, b2], "demo_qe", n_samples=FAST, seed=3)
    qa = np.mean([[r["scores"]["demo_qe"] for r in x] for x in (a1, a2)], axis=0)
    qb = np.mean([[r["scores"]["demo_qe"] for r in x] for x in (b1, b2)], axis=0)
    idx = np.random.default_rng(3).choice(len(rows), size=(FAST, len(rows)), replace=True)
    d = np.abs(qa[idx].mean(1) - qb[idx].mean(1))
    expected_p = (np.sum(d - d.mean() > abs(qa.mean() - qb.mean())) + 1) / (FAST + 1)
    assert seg.diff == pytest.approx(qa.mean() - qb.mean()) and seg.p == pytest.approx(expected_p)
    signed = qa[idx].mean(1) - qb[idx].mean(1)  # the interval is of the signed resampled differences
    assert (seg.lo, seg.hi) == (pytest.approx(np.quantile(signed, 0.025)), pytest.approx(np.quantile(signed, 0.975)))


# --------------------------------------------------------------------------- verdicts


def test_verdicts_need_both_seeds_and_sentences(analysis):
    v = {(c.method, c.metric): c for c in analysis.comparisons}
    assert set(v) == {(m, x) for m in ("loss=cpo", "loss=dpo") for x in ("bleu", "chrf", "demo_qe")}
    for metric in ("bleu", "chrf", "demo_qe"):
        cpo, dpo = v[("loss=cpo", metric)], v[("loss=dpo", metric)]
        assert ((cpo.verdict, cpo.basis) == ("better", "seeds and test sentences")
                and cpo.p_seeds < 0.05 and cpo.p_bootstrap < 0.05)
        assert cpo.seed_pairs == "3 better, 0 worse of 3"
        assert dpo.verdict == "no significant difference" and dpo.diff == 0 and dpo.p_bootstrap == 1.0
    def bleu(config):
        return [json.loads((Path(j.path) / "results.json").read_text())["after"]["bleu"]
                for j in analysis.jobs if j.label == config]

    sft, cpo = bleu("loss=sft,optim.lr=0.001"), bleu("loss=cpo,optim.lr=0.0001,beta=0.1")
    assert v[("loss=cpo", "bleu")].p_seeds == pytest.approx(sps.ttest_ind(cpo, sft, equal_var=False).pvalue)


def test_one_seed_or_no_translations_say_which_test_decided(sweep, tmp_path):
    one = report.analyze([j for j in report.load_sweep(sweep) if j.seed == 1], bootstrap_samples=FAST)
    c = next(c for c in one.comparisons if c.method == "loss=cpo" and c.metric == "bleu")
    assert (c.verdict, c.basis, c.p_seeds) == ("better", "test sentences only", None)
    s = copy_of(sweep, tmp_path)
    for d in s.glob("*/test_translations.jsonl"):
        d.unlink()
    a = report.analyze(report.load_sweep(s), bootstrap_samples=FAST)
    c = next(c for c in a.comparisons if c.method == "loss=cpo" and c.metric == "chrf")
    assert (c.verdict, c.basis, c.p_bootstrap) == ("better", "seeds only", None)
    md = report.render_markdown(a, "s", {}, {}, s, FAST)
    assert ("## Jobs without test translations (no paired bootstrap for them)" in md
            and "- 21 job(s): no test_translations.jsonl" in md)


def test_different_test_sets_are_not_compared(sweep, tmp_path):
    s = copy_of(sweep, tmp_path)
    f = s / "6_loss=cpo,optim.lr=0.0001,beta=0.1,seed=1" / "test_translations.jsonl"
    rows = [json.loads(x) for x in f.read_text().splitlines()]
    rows[16]["source"] = "something else"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = report.analyze(report.load_sweep(s), bootstrap_samples=FAST)
    c = next(c for c in a.comparisons if c.method == "loss=cpo" and c.metric == "bleu")
    assert (c.verdict == "not comparable"
            and c.basis == "test sets differ (row 17: the source differs from the baseline's)")


def test_baseline_by_value_label_or_name_and_when_absent(sweep):
    jobs = report.load_sweep(sweep)
    assert report.analyze(jobs, baseline="loss=dpo", bootstrap_samples=10).baseline == "loss=dpo"
    assert report.analyze(jobs, baseline="CPO", bootstrap_samples=10).baseline == "loss=cpo"
    a = report.analyze(jobs, baseline="sft_ref", bootstrap_samples=FAST)
    assert (a.baseline is None and not a.comparisons
            and "baseline=sft_ref is not a method of this sweep" in a.baseline_note)
    with pytest.raises(report.SelectionError, match="baseline=sft_ref is not a method of this sweep"):
        report.analyze(jobs, baseline="sft_ref", baseline_required=True)
    with pytest.raises(report.SelectionError, match="alpha=1.5"):
        report.analyze(jobs, alpha=1.5)


def test_several_directions_get_per_direction_tables_and_a_stratified_bootstrap(tmp_path):
    rows = make_test_rows(20, ("de", "en")) + make_test_rows(20, ("en", "de"))
    methods = {k: PROTOCOL[k][:1] for k in ("sft", "cpo")}
    s = make_protocol_sweep(tmp_path / "multi", methods, failed=False, test_rows=rows)
    a = report.analyze(report.load_sweep(s), bootstrap_samples=FAST)
    d = a.directions
    assert set(d["direction"]) == {"de-en", "en-de", "avg xx->en", "avg en->xx"}
    one = d[(d.method == "loss=cpo") & (d.direction == "de-en") & (d.metric == "bleu")].iloc[0]
    from sacrebleu.metrics import BLEU

    per_seed = []
    cpo_config = a.selected.set_index("method").loc["loss=cpo", "config"]
    for j in a.jobs:
        if j.label == cpo_config:
            de = [r for r in j.translations if r["src_lang"] == "de"]
            per_seed.append(BLEU().corpus_score([r["hypothesis"] for r in de], [[r["reference"] for r in de]]).score)
    assert one["mean"] == pytest.approx(np.mean(per_seed)) and one["n"] == 3
    c = next(c for c in a.comparisons if c.method == "loss=cpo" and c.metric == "bleu")
    assert c.verdict == "better"
    assert "## Per direction" in report.render_markdown(a, "s", {}, {}, s, FAST)


def test_health_metrics_are_shown_and_not_tested(tmp_path):
    health = {"off_target": 0.01, "copy_rate": 0.0, "repetition": 0.02, "length_ratio": 0.97}
    s = make_protocol_sweep(tmp_path / "h", {k: PROTOCOL[k][:1] for k in ("sft", "cpo")}, failed=False,
                            extra_after=health)
    a = report.analyze(report.load_sweep(s), bootstrap_samples=FAST)
    assert a.health == ["off_target", "copy_rate", "repetition", "length_ratio"] and "off_target" not in a.quality
    assert {c.metric for c in a.comparisons} == {"bleu", "chrf", "demo_qe"}
    md = report.render_markdown(a, "s", {}, {}, s, FAST)
    assert "## Health of the translations (test split)" in md
    assert "| method | seeds | off-target ↓ | copy rate ↓ | repetition ↓ | length ratio →1 |" in md
    assert report.direction("test/length_ratio") == "one" and report.direction("test/ter") == "lower"


# --------------------------------------------------------------------------- report files


def test_write_report_files(sweep, written):
    m = written
    md = (sweep / "report.md").read_text()
    assert "## Selected configurations, test split" in md and "| CPO | learning rate 0.0001, beta 0.1 | 3 |" in md
    cpo_row = next(ln for ln in md.splitlines() if ln.startswith("| CPO |"))
    assert cpo_row.count("▲") == 3 and "**0.900 ± 0.010**" in cpo_row            # significant and the best mean
    grid = md.split("## Every grid point")[1].split("## Figures")[0]
    assert "| CPO ★ | learning rate 0.0001, beta 0.1 |" in grid and "**" not in grid   # no best marks on the grid
    assert "val/rewards" not in md.split("## Every grid point")[0]                   # no loss-specific columns compared
    assert "Verdicts: 3 better, 3 no significant difference." in md
    csv = pd.read_csv(sweep / "report.csv")
    assert csv["selected"].sum() == 3 and set(csv.loc[csv.selected, "method_name"]) == {"SFT (preferred)", "CPO", "DPO"}
    sig = pd.read_csv(sweep / "significance.csv")
    assert list(sig.columns)[:3] == ["method", "metric", "n"] and len(sig) == 6
    tested = sig.dropna(subset=["p_bootstrap"])  # each bootstrap interval holds its own point estimate
    inside = (tested.bootstrap_lo <= tested.bootstrap_diff) & (tested.bootstrap_diff <= tested.bootstrap_hi)
    assert len(tested) and inside.all()
    manifest = json.loads((sweep / "report.json").read_text())
    assert (manifest["protocol"]["baseline"] == "loss=sft"
            and manifest["methods"]["loss=cpo"]["color"] == report.METHODS["cpo"][1])
    assert manifest["verdict_sentences"][0].startswith("CPO vs SFT (preferred) on BLEU: better (+")
    assert sorted(m["plots"].values()) == [
        f"plots/{n}.png" for n in ("curves_train", "curves_val", "grid", "test_metrics")
    ]
    assert all(_is_png(sweep / p) for p in m["plots"].values()) and "metrics vs beta" in m["skipped_plots"]
    tex = (sweep / "report.tex").read_text()
    assert tex.count("\\toprule") == 2 and "\\bottomrule" in tex and "learning rate 0.0001" in tex
    assert "optim.lr" not in tex
    assert "SFT (preferred) (baseline)" in tex and "$^{\\blacktriangle}$" in tex and "\\textbf{" in tex
    ncols = None
    for line in tex.splitlines():   # every row of a table has its tabular's columns, and nothing unescaped
        if line.startswith("\\begin{tabular}"):
            ncols = len(line.split("{")[2].rstrip("}"))
        elif line.endswith("\\\\"):
            assert line.count("&") + 1 == ncols, line
            assert not re.search(r"(?<!\\)[_%#]", line), line


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="needs pdflatex (texlive-latex-recommended)")
def test_report_tex_compiles_in_a_two_column_paper(sweep, written, tmp_path):
    """report.tex as a paper would \\input it: it compiles, and no table runs past the page."""
    (tmp_path / "paper.tex").write_text(
        "\\documentclass[twocolumn]{article}\n\\usepackage{booktabs,amssymb,graphicx}\n"
        f"\\begin{{document}}\n\\input{{{sweep / 'report.tex'}}}\n\\end{{document}}\n")
    p = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and (tmp_path / "paper.pdf").is_file(), p.stdout[-2000:]
    assert "Overfull \\hbox" not in p.stdout, p.stdout[-2000:]


def test_latex_escapes_and_stale_figures_go(sweep, tmp_path):
    from cpo.report.tables import _tex

    assert _tex("loss=cpo_simpo 50% #1 a&b ± ▲") == "loss=cpo\\_simpo 50\\% \\#1 a\\&b $\\pm$ $^{\\blacktriangle}$"
    s = copy_of(sweep, tmp_path)
    (s / "plots").mkdir()
    (s / "plots" / "grid.png").write_bytes(PNG_MAGIC)
    failed = [j for j in report.load_sweep(s) if not j.ok]
    m = report.write_report(report.analyze(failed), s, plots=True)
    assert m["completed"] == 0 and not (s / "plots" / "grid.png").exists()   # no figure of an earlier report stays
    assert not (s / "report.tex").exists() and "No completed jobs with metrics" in (s / "report.md").read_text()
    with pytest.raises(FileNotFoundError, match="no such sweep folder"):
        report.load_sweep(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no job folders"):
        report.load_sweep(tmp_path)


# --------------------------------------------------------------------------- W&B conversion (no network)


class FakeRun(SimpleNamespace):
    def scan_history(self, page_size=1000):
        return iter(self.rows)


def _fake_run(name="beta=0.1,loss=cpo,seed=2", state="finished") -> FakeRun:
    return FakeRun(
        name=name, id="abc123", state=state, path=["me", "cpo", "abc123"],
        config={"config": {"seed": 2, "beta": 0.1, "loss": {"name": "cpo", "beta": 0.1}}, "trainable_parameters": 7},
        summary_metrics={"val/logps/accuracies": 0.8, "val/nll_loss": 0.3, "val/chrf": 60.0, "train/loss": 0.5,
                         "test/bleu": 30.0, "test/demo_qe": 0.8, "test/pref_accuracy": 0.8,
                         "val/samples": {"_type": "table-file"},
                         "trainer/global_step": 29, "_step": 9},
        rows=[{"train/loss": 0.9, "trainer/global_step": 9, "_step": 0},
              {"val/samples": {"_type": "table-file"}, "_step": 1},
              {"val/nll_loss": 0.3, "trainer/global_step": 14, "_step": 2},
              {"train/loss": 0.5, "trainer/global_step": 19, "_step": 3}],
    )


def test_wandb_run_to_job():
    job = report.wandb_run_to_job(_fake_run())
    assert job.ok and job.seed == 2 and job.overrides == {"beta": "0.1", "loss": "cpo", "seed": "2"}
    assert job.results["val"] == {"val/logps/accuracies": 0.8, "val/nll_loss": 0.3, "val/chrf": 60.0}
    assert job.results["after"] == {"bleu": 30.0, "demo_qe": 0.8, "pref_accuracy": 0.8} and "before" not in job.results
    assert job.translations is None and job.translations_note == "W&B holds no test translations"
    assert list(job.curve["step"]) == [9, 14, 19] and job.curve["train/loss"].dropna().tolist() == [0.9, 0.5]
    crashed = report.wandb_run_to_job(_fake_run(state="crashed"))
    assert not crashed.ok and "crashed" in crashed.error
    assert report.split_run_name("loss=cpo,optim.betas=[0.9,0.99],seed=1") == {
        "loss": "cpo", "optim.betas": "[0.9,0.99]", "seed": "1"
    }
    assert report.split_run_name("dazzling-sun-4") is None


def test_load_wandb_with_fake_api_then_analyze_without_bootstrap():
    runs = [_fake_run(f"loss={loss},seed={s}") for loss in ("cpo", "sft") for s in (1, 2)]
    for r in runs:
        r.summary_metrics = dict(
            r.summary_metrics, **{"test/bleu": 30.0 + (5 if "cpo" in r.name else 0) + int(r.name[-1]) * 0.1}
        )
    calls = {}

    class Api:
        def runs(self, path, filters=None, lazy=True):
            calls.update(path=path, filters=filters)
            return runs

    jobs = report.load_wandb("cpo", "sweep-10-00-00", entity="me", api=Api())
    assert calls == {"path": "me/cpo", "filters": {"group": "sweep-10-00-00"}}
    a = report.analyze(jobs)
    c = next(c for c in a.comparisons if c.metric == "bleu")
    assert (c.verdict, c.basis, c.p_bootstrap) == ("better", "seeds only", None)

    class Offline:
        def runs(self, *a, **k):
            raise ConnectionError("Max retries exceeded with url: https://api.wandb.ai/graphql")

    with pytest.raises(report.WandbUnavailable, match="network access"):
        report.load_wandb("cpo", "g", api=Offline())


# --------------------------------------------------------------------------- the app and the notebook


def test_compare_app(sweep, tmp_path):
    from conftest import run_apps

    out = tmp_path / "elsewhere"
    runs = run_apps("compare.py", [
        ["sweep=sweep", f"out_dir={out}", "plots=false", f"bootstrap.samples={FAST}"],   # relative to the launch folder
        [f"sweep={sweep}", f"out_dir={out}_2", "select_by=test/bleu"],
        [f"sweep={sweep}", f"out_dir={out}_3", "baseline=sft_ref"],
    ], cwd=sweep.parent)
    p = runs[0]
    # The crashed job (no results, no divergence in its log) makes the sweep unfinished: report written, exit 1.
    assert p.returncode == 1, p.stderr
    assert ("CPO vs SFT (preferred) on BLEU: better" in p.stdout
            and "21_loss=cpo,optim.lr=0.001,beta=0.5,seed=4" in p.stderr and "the sweep is unfinished" in p.stderr)
    assert (out / "report.md").is_file() and (out / "report.tex").is_file() and not (out / "plots").exists()
    assert not (REPO / "compare.log").exists() and not (sweep / ".hydra").exists()
    for p, message in zip(runs[1:], ["select_by=test/bleu is a test-split metric",
                                     "baseline=sft_ref is not a method of this sweep"]):
        assert (p.returncode == 2 and p.stderr.startswith("error: ") and message in p.stderr
                and "Traceback" not in p.stderr), p.stderr
    assert not (tmp_path / "elsewhere_2").exists()   # nothing finished-looking is left behind


@pytest.fixture
def jupyter_env(tmp_path, monkeypatch):
    """A python3 kernelspec for this interpreter in a temp prefix (nothing under $HOME)."""
    prefix = tmp_path / "jupyter"
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--prefix", str(prefix), "--name", "python3"],
                   check=True, capture_output=True, timeout=120)
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec("python3")
    assert spec.argv[0] == sys.executable
    return prefix


def test_notebook_committed_without_outputs():
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / "ablations.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    text = "\n".join(c.source for c in nb.cells)
    assert 'CPO_BASELINE", "sft")' in text and "no significant difference" in text


def test_notebook_says_better_or_worse_with_the_test(sweep, written, jupyter_env, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    s = sweep
    monkeypatch.setenv("CPO_REPORT_DIR", str(s))
    monkeypatch.setenv("CPO_BOOTSTRAP_SAMPLES", str(FAST))
    nb = nbformat.read(REPO / "notebooks" / "ablations.ipynb", as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                   + str(o.get("data", {}).get("text/markdown", ""))
                   for o in outputs)
    assert str(s) in text and "Baseline: **SFT (preferred)** (`loss=sft`)" in text
    assert ("CPO vs SFT (preferred) on BLEU: better (" in text
            and "DPO vs SFT (preferred) on chrF: no significant difference (" in text)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 4


def test_one_configuration_and_seed_twice_is_refused(sweep, tmp_path):
    """A re-launch that wrote a job again into another folder would count one seed twice."""
    dst = copy_of(sweep, tmp_path)
    first = next(d for d in dst.iterdir() if d.name.startswith("0_"))
    shutil.copytree(first, dst / ("99_" + first.name.split("_", 1)[1]))
    with pytest.raises(ValueError, match="same configuration and seed"):
        report.load_sweep(dst)


def test_a_point_with_a_failed_seed_is_not_selected_on_its_survivors(tmp_path):
    from report_fixtures import make_protocol_sweep, write_job

    root = make_protocol_sweep(tmp_path / "sw", failed=False)
    d = write_job(root, 99, ["loss=sft", "optim.lr=0.001", "seed=4", "trainer.max_steps=20"], None, None)
    (d / "train.log").write_text("error: training diverged at step 3: the gradient norm is nan\n")
    a = report.analyze(report.load_sweep(root), select_by="val/demo_qe", baseline="sft", bootstrap_samples=FAST)
    sel = a.selected.set_index("method")
    assert "optim.lr=0.0001" in str(sel.loc[a.baseline, "config"])  # 0.001 has the better mean, but lost a seed
    assert "a seed failed" in " ".join(a.notes.values())
