"""Metric independence in compare.py (SPEC section 9, MINT): a run records which scorer built its pairs, and
the report marks every table column, significance row and verdict that rests on that scorer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cpo import report
from cpo.data.records import PreferenceExample, pair_scorers
from cpo.report.independence import MARK, families, same_scorer
from report_fixtures import make_protocol_sweep

DEMO_PAIRS = [{"scorer": "demo_qe/v1", "scorer_identity": None, "pairs": 100}]
FAST = 50


def test_a_run_records_the_pair_scorer_of_its_rows():
    rows = [PreferenceExample("s", "a", "b", "de", "en", provenance={"scorer": "kiwi_xcomet", "scorer_identity": "m"}),
            PreferenceExample("t", "a", "b", "de", "en", provenance={"scorer": "kiwi_xcomet", "scorer_identity": "m"}),
            PreferenceExample("u", "a", "b", None, None)]
    assert pair_scorers(rows) == [{"scorer": "kiwi_xcomet", "scorer_identity": "m", "pairs": 2},
                                  {"scorer": None, "scorer_identity": None, "pairs": 1}]


def test_which_metric_is_the_pair_scorer():
    mean = {"scorer": "kiwi_xcomet", "scorer_identity": "mean(0.5*comet:Unbabel/wmt23-cometkiwi-da-xxl@abc,"
                                                          "0.5*comet:Unbabel/XCOMET-XXL@def)"}
    assert same_scorer(mean, "kiwi_xxl", "comet:Unbabel/wmt23-cometkiwi-da-xxl@abc")   # a member of the mean
    assert same_scorer(mean, "xcomet_xxl", None)                                         # same family by name
    assert not same_scorer(mean, "chrf", None) and not same_scorer(mean, "bleu", None)
    assert same_scorer({"scorer": "demo_qe/v1"}, "demo_qe", "demo_qe/v1")                # the demo's rows
    chrf = {"scorer": "sentence_chrf", "scorer_identity": "sacrebleu2.6.0:sentence_chrf"}
    assert same_scorer(chrf, "chrf", None) and same_scorer(chrf, "chrfpp", None) and not same_scorer(chrf, "bleu", None)
    assert not same_scorer({"scorer": None, "scorer_identity": None}, "demo_qe", "demo_qe/v1")
    assert families("kiwi_xcomet") == {"kiwi", "xcomet"} and families("comet22") == {"comet"}


def _with_provenance(sweep: Path, pairs: list | None, exempt_loss: str | None = None) -> Path:
    for res in sweep.glob("*/results.json"):
        r = json.loads(res.read_text())
        if pairs is not None:
            r["provenance"] = {"pair_scorers": pairs, "eval_scorers": {"demo_qe": "demo_qe/v1"}}
        if r["loss"] == exempt_loss:
            r["config"]["loss"].update(kind="none", nll_target="reference")
        res.write_text(json.dumps(r))
    return sweep


def test_compare_marks_every_verdict_that_rests_on_the_pair_scorer(tmp_path):
    sweep = _with_provenance(make_protocol_sweep(tmp_path / "sweep", failed=False), DEMO_PAIRS)
    a = report.analyze(report.load_sweep(sweep), bootstrap_samples=FAST)  # select_by=auto: val/demo_qe
    assert a.select_by == "val/demo_qe"
    assert a.same_scorer("test/demo_qe", "loss=cpo") and a.same_scorer("val/demo_qe")
    assert not a.same_scorer("test/bleu", "loss=cpo") and not a.same_scorer("test/chrf", "loss=cpo")
    out = report.write_report(a, tmp_path / "out", plots=False, samples=FAST)
    verdicts = {v.split(":")[0]: v for v in out["verdict_sentences"]}
    qe = [v for k, v in verdicts.items() if k.endswith("demo QE")]
    assert qe and all("metric interference" in v for v in qe)
    assert all("metric interference" not in v for k, v in verdicts.items() if not k.endswith("demo QE"))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**Selection by `val/demo_qe` rests on the scorer that built the pairs**" in md
    assert f"demo QE ↑ {MARK}" in md and f"BLEU ↑ {MARK}" not in md
    assert f"| CPO | demo QE {MARK} |" in md  # the significance row
    man = json.loads((tmp_path / "out" / "report.json").read_text())
    assert man["metric_independence"]["select_by_same_scorer"] is True
    assert man["metric_independence"]["same_scorer_metrics"]["loss=cpo"] == ["demo_qe"]
    assert any(c["same_scorer"] for c in man["comparisons"]) and not all(c["same_scorer"] for c in man["comparisons"])
    assert "$^{\\dagger}$" in (tmp_path / "out" / "report.tex").read_text()

    # An independent selection metric is said to be one; the QE verdicts stay marked.
    b = report.analyze(report.load_sweep(sweep), select_by="val/chrf", bootstrap_samples=FAST)
    report.write_report(b, tmp_path / "out2", plots=False, samples=FAST)
    md = (tmp_path / "out2" / "report.md").read_text()
    assert "Selection by `val/chrf` is independent of the pair-building scorers." in md and f"{MARK}" in md


@pytest.mark.parametrize("case", ["older_runs", "sft_on_references"])
def test_unrecorded_and_exempt_methods(tmp_path, case):
    sweep = make_protocol_sweep(tmp_path / "sweep", failed=False)
    if case == "older_runs":
        a = report.analyze(report.load_sweep(sweep), bootstrap_samples=FAST)
        assert set(a.independence.unknown) == set(a.methods) and not a.same_scorer("test/demo_qe", "loss=cpo")
        report.write_report(a, tmp_path / "out", plots=False, samples=FAST)
        assert "Not recorded (runs of older code)" in (tmp_path / "out" / "report.md").read_text()
    else:
        _with_provenance(sweep, DEMO_PAIRS, exempt_loss="sft")
        a = report.analyze(report.load_sweep(sweep), bootstrap_samples=FAST)
        assert a.independence.exempt == ["loss=sft"]
        # The baseline's pairs do not count, the method's own still do.
        assert a.same_scorer("test/demo_qe", "loss=cpo") and not a.independence.rests_on("loss=sft", "demo_qe")
