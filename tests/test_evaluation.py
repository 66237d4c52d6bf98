"""Tests of cpo.evaluation and scripts/evaluate.py: sacrebleu figures, errors, the Hydra app,
and the published WMT'22 BLEU averages reproduced from the shared real data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from cpo.evaluation import (
    corpus_metrics,
    evaluate_directions,
    evaluate_files,
    markdown_table,
    parse_direction,
    summarize,
    wmt22_directions,
)
from cpo.io import DataError
from cpo.scoring import Scorer

from conftest import REPO, WMT22

SRC = ["Der Hund sieht die Katze.", "Das Haus ist alt.", "Zwei Leute bauen ein Auto."]
HYP = ["The dog sees the cat.", "The house old is.", "Two people are building a car."]
REF = ["The dog sees the cat.", "The house is old.", "Two people build a car."]

# sacrebleu 2.x corpus BLEU averages over five directions (shared/data/README.md).
PUBLISHED = {"ALMA-13B-LoRA": (35.88, 31.92), "ALMA-13B-R": (35.41, 26.98)}


class LengthScorer(Scorer):
    """Fake reference-free scorer: the hypothesis length; records whether it saw references."""

    name = "length"

    def __init__(self) -> None:
        self.got_sources: list[str] = []

    @property
    def identity(self) -> str:
        return "length/v1"

    def _score(self, sources, hypotheses, references, tgt_lang):
        self.got_sources.extend(sources)
        return [float(len(h)) for h in hypotheses]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_corpus_metrics_equal_direct_sacrebleu():
    m = corpus_metrics(HYP, REF, "en", sources=SRC, scorers=[LengthScorer()])
    assert m["bleu"] == sacrebleu.corpus_bleu(HYP, [REF], tokenize="13a").score
    assert m["chrf"] == sacrebleu.corpus_chrf(HYP, [REF]).score
    bleu = sacrebleu.BLEU(tokenize="13a")
    bleu.corpus_score(HYP, [REF])
    assert m["bleu_signature"] == str(bleu.get_signature())
    assert "tok:13a" in m["bleu_signature"] and "nc:6" in m["chrf_signature"]
    assert m["n"] == 3
    assert m["length"] == pytest.approx(sum(len(h) for h in HYP) / 3)


def test_chinese_target_uses_the_zh_tokenizer():
    hyp, ref = ["今天天气很好。", "我喜欢猫。"], ["今天天气很好！", "我喜欢狗。"]
    m = corpus_metrics(hyp, ref, "zh")
    assert "tok:zh" in m["bleu_signature"]
    assert m["bleu"] == sacrebleu.corpus_bleu(hyp, [ref], tokenize="zh").score
    assert m["bleu"] != sacrebleu.corpus_bleu(hyp, [ref], tokenize="13a").score


def test_corpus_metrics_input_errors():
    with pytest.raises(ValueError, match="3 hypotheses but 2 references"):
        corpus_metrics(HYP, REF[:2], "en")
    with pytest.raises(ValueError, match="needs the source sentences"):
        corpus_metrics(HYP, REF, "en", scorers=[LengthScorer()])
    clash = LengthScorer()
    clash.name = "bleu"
    with pytest.raises(ValueError, match="'bleu' clashes"):
        corpus_metrics(HYP, REF, "en", sources=SRC, scorers=[clash])
    with pytest.raises(ValueError, match="no segments"):
        corpus_metrics([], [], "en")


def test_evaluate_files_and_their_errors(tmp_path):
    src, ref, hyp = _write(tmp_path / "s.de", SRC), _write(tmp_path / "r.en", REF), _write(tmp_path / "h.en", HYP)
    scorer = LengthScorer()
    m = evaluate_files(src, ref, hyp, "de", "en", scorers=[scorer])
    assert m == corpus_metrics(HYP, REF, "en", sources=SRC, scorers=[LengthScorer()])
    assert scorer.got_sources == SRC
    short = _write(tmp_path / "short.en", HYP[:2])
    with pytest.raises(DataError, match="not aligned") as err:
        evaluate_files(src, ref, short, "de", "en")
    assert str(short) in str(err.value) and str(ref) in str(err.value) and str(src) in str(err.value)
    bad = tmp_path / "bad.en"
    bad.write_bytes(b"fine\n\xff\xfe broken\nok\n")
    with pytest.raises(DataError, match=rf"{bad}:2: not valid UTF-8"):
        evaluate_files(src, ref, bad, "de", "en")
    empty = _write(tmp_path / "empty.en", [HYP[0], "", HYP[2]])
    with pytest.raises(DataError, match=rf"{empty}:2: empty line"):
        evaluate_files(src, ref, empty, "de", "en")


def test_summarize_and_markdown_table():
    results = {
        "de-en": {"bleu": 30.0, "chrf": 60.0, "kiwi": 0.8, "n": 10, "bleu_signature": "x"},
        "cs-en": {"bleu": 40.0, "chrf": 70.0, "kiwi": 0.9, "n": 5, "bleu_signature": "x"},
        "en-de": {"bleu": 20.0, "chrf": 50.0, "n": 7, "bleu_signature": "y"},
    }
    s = summarize(results)
    assert s["xx->en"]["bleu"] == 35.0 and s["xx->en"]["kiwi"] == pytest.approx(0.85)
    assert s["xx->en"]["directions"] == ["de-en", "cs-en"]
    assert s["en->xx"] == {"bleu": 20.0, "chrf": 50.0, "directions": ["en-de"]}
    assert "n" not in s["xx->en"]
    table = markdown_table(results)
    lines = table.splitlines()
    assert lines[0] == "| direction | n | bleu | chrf | kiwi |"
    assert lines[2] == "| de-en | 10 | 30.00 | 60.00 | 0.8000 |"
    assert lines[4] == "| en-de | 7 | 20.00 | 50.00 |  |"
    assert "| **avg xx->en** | 2 | 35.00 | 65.00 | 0.8500 |" in lines
    assert "| **avg en->xx** | 1 | 20.00 | 50.00 |  |" in lines
    assert "- BLEU `x`: de-en, cs-en" in lines
    assert summarize({"de-fr": {"bleu": 1.0}}) == {}
    with pytest.raises(ValueError, match="not of the form"):
        parse_direction("deen")


def _run_app(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "evaluate.py"), *args],
        capture_output=True, text=True, timeout=300, cwd=cwd,
    )


def test_hydra_app_single_direction_relative_paths(tmp_path):
    _write(tmp_path / "s.de", SRC), _write(tmp_path / "r.en", REF), _write(tmp_path / "h.en", HYP)
    out = tmp_path / "run"
    proc = _run_app(
        ["src=s.de", "ref=r.en", "hyp=h.en", "src_lang=de", "tgt_lang=en", "scorers=[chrf,bleu]", f"hydra.run.dir={out}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    expected = corpus_metrics(HYP, REF, "en")
    for key in ("bleu", "chrf", "bleu_signature", "chrf_signature", "n"):
        assert metrics[key] == expected[key], key
    assert metrics["direction"] == "de-en" and metrics["directions"]["de-en"]["bleu"] == expected["bleu"]
    assert metrics["sentence_chrf"] == pytest.approx(
        sum(sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(HYP, REF)) / 3
    )
    assert "sentence_bleu" in metrics and set(metrics["scorers"]) == {"sentence_chrf", "sentence_bleu"}
    assert metrics["inputs"]["de-en"]["hyp"] == str(tmp_path / "h.en")
    table = (out / "metrics.md").read_text(encoding="utf-8")
    assert table.startswith("| direction |") and "| de-en | 3 |" in table
    assert "| de-en | 3 |" in proc.stdout
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_hydra_app_many_directions_and_bad_config(tmp_path):
    files = {
        "de-en": (SRC, REF, HYP),
        "en-de": (REF, SRC, SRC[:2] + ["Zwei Leute bauen Auto."]),
    }
    args = []
    for direction, (s, r, h) in files.items():
        for key, lines in (("src", s), ("ref", r), ("hyp", h)):
            path = _write(tmp_path / f"{direction}.{key}", lines)
            args.append(f"+directions.{direction}.{key}={path}")
    out = tmp_path / "run"
    proc = _run_app([*args, f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["directions"]) == {"de-en", "en-de"} and "bleu" not in metrics
    assert metrics["averages"]["xx->en"]["bleu"] == metrics["directions"]["de-en"]["bleu"]
    assert metrics["averages"]["en->xx"]["directions"] == ["en-de"]
    # No input, or two input modes at once: a clear error, no output.
    bad = _run_app([f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path)
    assert bad.returncode != 0 and "give exactly one input mode" in bad.stderr
    assert not (tmp_path / "bad" / "metrics.json").exists()


def test_wmt22_directions_layout(tmp_path):
    if not WMT22.is_dir():
        pytest.skip(f"shared WMT'22 data not found at {WMT22} (set CPO_SHARED_DATA)")
    dirs = wmt22_directions(WMT22, "ALMA-13B-R")
    assert len(dirs) == 10 and dirs["en-zh"]["hyp"].endswith("ALMA-13B-R/enzh/test.en-zh.zh")
    assert dirs["de-en"]["src"].endswith("wmt-testset/deen/test.de-en.de")
    with pytest.raises(FileNotFoundError, match="no such system.*ALMA-13B-LoRA"):
        wmt22_directions(WMT22, "NoSuchSystem")
    with pytest.raises(FileNotFoundError, match="not a WMT'22 folder"):
        wmt22_directions(tmp_path, "ALMA-13B-R")


@pytest.mark.parametrize("system", sorted(PUBLISHED))
def test_wmt22_bleu_averages_match_published(system):
    if not WMT22.is_dir():
        pytest.skip(f"shared WMT'22 data not found at {WMT22} (set CPO_SHARED_DATA)")
    summary = summarize(evaluate_directions(wmt22_directions(WMT22, system)))
    xx_en, en_xx = summary["xx->en"]["bleu"], summary["en->xx"]["bleu"]
    print(f"\n{system}: corpus BLEU xx->en {xx_en:.4f}, en->xx {en_xx:.4f}")
    assert round(xx_en, 2) == pytest.approx(PUBLISHED[system][0], abs=0.01)
    assert round(en_xx, 2) == pytest.approx(PUBLISHED[system][1], abs=0.01)
    assert len(summary["xx->en"]["directions"]) == len(summary["en->xx"]["directions"]) == 5
