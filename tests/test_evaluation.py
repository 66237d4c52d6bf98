"""Tests of cpo.mt.evaluation and scripts/evaluate.py: sacrebleu figures, health checks, errors, the Hydra app,
and the published WMT'22 BLEU averages reproduced from the shared real data."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from sacrebleu.metrics import BLEU, CHRF, TER

from cpo.mt.evaluation import (
    CORPUS_METRICS,
    corpus_metrics,
    evaluate_directions,
    evaluate_files,
    markdown_table,
    parse_direction,
    summarize,
    wmt22_directions,
)
from cpo.mt.health import HEALTH_KEYS
from cpo.io import DataError
from cpo.languages import sacrebleu_tokenizer
from cpo.scoring import Scorer, ScoreError

from conftest import REPO, WMT22, run_apps

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


class NaNScorer(LengthScorer):
    """The length, but NaN for a hypothesis containing "BAD" (a model overflowing on one input)."""

    def __init__(self, name: str = "nan") -> None:
        super().__init__()
        self.name = name

    def _score(self, sources, hypotheses, references, tgt_lang):
        return [float("nan") if "BAD" in h else float(len(h)) for h in hypotheses]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_corpus_metrics_equal_direct_sacrebleu():
    m = corpus_metrics(HYP, REF, "en", sources=SRC, scorers=[LengthScorer()], src_lang="de")
    for key, metric in (("bleu", BLEU(tokenize="13a")), ("chrf", CHRF()), ("chrfpp", CHRF(word_order=2)),
                        ("ter", TER())):
        assert m[key] == metric.corpus_score(HYP, [REF]).score, key
        assert m[f"{key}_signature"] == str(metric.get_signature()), key
    assert "tok:13a" in m["bleu_signature"] and "nw:2" in m["chrfpp_signature"] and "tok:tercom" in m["ter_signature"]
    assert m["n"] == 3
    assert m["length"] == pytest.approx(sum(len(h) for h in HYP) / 3)
    # Health checks when the sources are given, and every key a valid identifier (Hydra overrides, CSV headers).
    assert set(HEALTH_KEYS) <= set(m) and m["copy_rate"] == 0 and m["empty"] == 0
    assert all(k.isidentifier() for k in m)
    bleu_only = corpus_metrics(HYP, REF, "en", metrics=("bleu",))
    assert set(bleu_only) == {"bleu", "bleu_signature", "n"} and bleu_only["bleu"] == m["bleu"]
    assert "copy_rate" not in corpus_metrics(HYP, REF, "en", sources=SRC, health=False)
    with pytest.raises(ValueError, match="unknown corpus metric 'chrf\\+\\+'"):
        corpus_metrics(HYP, REF, "en", metrics=("chrf++",))


def test_target_language_sets_the_tokenizers():
    hyp, ref = ["今天天气很好。", "我喜欢猫。"], ["今天天气很好！", "我喜欢狗。"]
    m = corpus_metrics(hyp, ref, "zh")
    assert "tok:zh" in m["bleu_signature"]
    assert m["bleu"] == sacrebleu.corpus_bleu(hyp, [ref], tokenize="zh").score
    assert m["bleu"] != sacrebleu.corpus_bleu(hyp, [ref], tokenize="13a").score
    # TER splits Chinese into characters; without it a sentence is one "word" and TER near 100.
    assert "asian:yes" in m["ter_signature"] and "norm:yes" in m["ter_signature"]
    assert m["ter"] == TER(normalized=True, asian_support=True).corpus_score(hyp, [ref]).score < 50
    # Korean: 13a, as ALMA's evaluation (SPEC section 6); no MeCab needed.
    assert sacrebleu_tokenizer("ko") == "13a"
    assert "tok:13a" in corpus_metrics(
        ["고양이를 좋아해요"], ["나는 고양이를 좋아해요"], "ko"
    )["bleu_signature"]


def test_japanese_bleu_uses_mecab_or_says_it_fell_back(monkeypatch):
    hyp, ref = ["猫が好きです。"], ["私は猫が好きです。"]
    if importlib.util.find_spec("MeCab") and importlib.util.find_spec("ipadic"):
        m = corpus_metrics(hyp, ref, "ja")
        assert "tok:ja-mecab" in m["bleu_signature"]
        assert m["bleu"] == sacrebleu.corpus_bleu(hyp, [ref], tokenize="ja-mecab").score
    monkeypatch.setitem(sys.modules, "MeCab", None)  # as on a machine without sacrebleu[ja]
    with pytest.warns(UserWarning, match="MeCab is not installed.*char instead of ja-mecab"):
        m = corpus_metrics(hyp, ref, "ja")
    assert "tok:char" in m["bleu_signature"]
    assert m["bleu"] == sacrebleu.corpus_bleu(hyp, [ref], tokenize="char").score


def test_corpus_metrics_input_errors():
    with pytest.raises(ValueError, match="3 hypotheses but 2 references"):
        corpus_metrics(HYP, REF[:2], "en")
    with pytest.raises(ValueError, match="needs the source sentences"):
        corpus_metrics(HYP, REF, "en", scorers=[LengthScorer()])
    clash = LengthScorer()
    clash.name = "bleu"
    with pytest.raises(ValueError, match="'bleu' clashes"):
        corpus_metrics(HYP, REF, "en", sources=SRC, scorers=[clash])
    clash.name = "copy_rate"
    with pytest.raises(ValueError, match="'copy_rate' clashes"):
        corpus_metrics(HYP, REF, "en", sources=SRC, scorers=[clash])
    with pytest.raises(ValueError, match="no segments"):
        corpus_metrics([], [], "en")
    with pytest.raises(ValueError, match="reference 2 of 3 is empty"):
        corpus_metrics(HYP, [REF[0], " ", REF[2]], "en")
    with pytest.raises(ValueError, match="source 3 of 3 is empty"):
        corpus_metrics(HYP, REF, "en", sources=SRC[:2] + ["\u200b"])


def test_evaluate_files_and_their_errors(tmp_path):
    src, ref, hyp = _write(tmp_path / "s.de", SRC), _write(tmp_path / "r.en", REF), _write(tmp_path / "h.en", HYP)
    scorer = LengthScorer()
    m = evaluate_files(src, ref, hyp, "de", "en", scorers=[scorer])
    assert m == corpus_metrics(HYP, REF, "en", sources=SRC, scorers=[LengthScorer()], src_lang="de")
    assert scorer.got_sources == SRC
    short = _write(tmp_path / "short.en", HYP[:2])
    with pytest.raises(DataError, match="not aligned") as err:
        evaluate_files(src, ref, short, "de", "en")
    assert str(short) in str(err.value) and str(ref) in str(err.value) and str(src) in str(err.value)
    bad = tmp_path / "bad.en"
    bad.write_bytes(b"fine\n\xff\xfe broken\nok\n")
    with pytest.raises(DataError, match=rf"{bad}:2: not valid UTF-8"):
        evaluate_files(src, ref, bad, "de", "en")
    # Empty hypotheses are system output: scored as empty (as sacrebleu does) and counted.
    hyps = [HYP[0], "", HYP[2]]
    empty = _write(tmp_path / "empty.en", hyps)
    m = evaluate_files(src, ref, empty, "de", "en", scorers=[LengthScorer()])
    assert m["empty"] == 1 and m["length"] == pytest.approx((len(HYP[0]) + len(HYP[2])) / 3)
    assert m["bleu"] == sacrebleu.corpus_bleu(hyps, [REF]).score
    # Empty sources and references stay errors, named by file and line.
    blank_src, blank_ref = (_write(tmp_path / "b.de", [SRC[0], "", SRC[2]]),
                            _write(tmp_path / "b.en", [REF[0], REF[1], " "]))
    with pytest.raises(DataError, match=rf"{blank_src}:2: empty source line; every source needs text"):
        evaluate_files(blank_src, ref, hyp, "de", "en")
    with pytest.raises(DataError, match=rf"{blank_ref}:3: empty reference line; every reference needs text"):
        evaluate_files(src, blank_ref, hyp, "de", "en")
    # A scorer's NaN names the hypothesis file and line.
    nan = _write(tmp_path / "nan.en", [HYP[0], "BAD", HYP[2]])
    with pytest.raises(ScoreError, match=rf"{nan}:2: scorer 'nan' \(length/v1\) gave nan for the hypothesis 'BAD'"):
        evaluate_files(src, ref, nan, "de", "en", scorers=[NaNScorer()])


def test_summarize_and_markdown_table():
    results = {
        "de-en": {"bleu": 30.0, "chrf": 60.0, "kiwi": 0.8, "n": 10, "bleu_signature": "x", "copy_rate": 0.1,
                  "empty": 2},
        "cs-en": {"bleu": 40.0, "chrf": 70.0, "kiwi": 0.9, "n": 5, "bleu_signature": "x", "copy_rate": 0.3,
                  "empty": 1},
        "en-de": {"bleu": 20.0, "chrf": 50.0, "n": 7, "bleu_signature": "y", "ter_signature": "t"},
    }
    s = summarize(results)
    assert s["xx->en"]["bleu"] == 35.0 and s["xx->en"]["kiwi"] == pytest.approx(0.85)
    assert s["xx->en"]["copy_rate"] == pytest.approx(0.2) and s["xx->en"]["empty"] == 3  # counts are summed
    assert s["xx->en"]["directions"] == ["de-en", "cs-en"]
    assert s["en->xx"] == {"bleu": 20.0, "chrf": 50.0, "directions": ["en-de"]}
    assert "n" not in s["xx->en"]
    table = markdown_table(results)
    lines = table.splitlines()
    assert lines[0] == "| direction | n | bleu | chrf | kiwi | copy_rate | empty |"
    assert lines[2] == "| de-en | 10 | 30.00 | 60.00 | 0.8000 | 0.1000 | 2 |"
    assert lines[4] == "| en-de | 7 | 20.00 | 50.00 |  |  |  |"
    assert "| **avg xx->en** | 2 | 35.00 | 65.00 | 0.8500 | 0.2000 | 3 |" in lines
    assert "| **avg en->xx** | 1 | 20.00 | 50.00 |  |  |  |" in lines
    assert "- BLEU `x`: de-en, cs-en" in lines and "- TER `t`: en-de" in lines
    assert lines[-1].startswith("Health checks (cpo.mt.health): off_target = ")
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
        ["src=s.de", "ref=r.en", "hyp=h.en", "src_lang=de", "tgt_lang=en", "scorers=[chrf,bleu]",
         f"hydra.run.dir={out}"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    expected = corpus_metrics(HYP, REF, "en", sources=SRC, src_lang="de")
    for key in (*CORPUS_METRICS, *(f"{k}_signature" for k in CORPUS_METRICS), "n", *HEALTH_KEYS):
        assert metrics[key] == expected[key], key
    assert metrics["direction"] == "de-en" and metrics["directions"]["de-en"]["bleu"] == expected["bleu"]
    assert metrics["sentence_chrf"] == pytest.approx(
        sum(sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(HYP, REF)) / 3
    )
    assert "sentence_bleu" in metrics and set(metrics["scorers"]) == {"sentence_chrf", "sentence_bleu"}
    assert metrics["inputs"]["de-en"]["hyp"] == str(tmp_path / "h.en")
    table = (out / "metrics.md").read_text(encoding="utf-8")
    assert (table.startswith("| direction | n | bleu | chrf | chrfpp | ter | sentence_chrf |")
            and "| de-en | 3 |" in table)
    assert "| off_target | off_target_src | copy_rate | repetition | length_ratio | empty |" in table
    assert "| de-en | 3 |" in proc.stdout
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_hydra_app_many_directions(tmp_path):
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
    proc = _run_app([*args, "metrics=[bleu,chrfpp]", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert set(metrics["directions"]) == {"de-en", "en-de"} and "bleu" not in metrics
    assert "chrf" not in metrics["directions"]["de-en"] and "chrfpp" in metrics["directions"]["de-en"]
    assert metrics["averages"]["xx->en"]["bleu"] == metrics["directions"]["de-en"]["bleu"]
    assert metrics["averages"]["en->xx"]["copy_rate"] == metrics["directions"]["en-de"]["copy_rate"]
    assert metrics["averages"]["en->xx"]["directions"] == ["en-de"]


# Each case starts the app (about 5 s here, 3 of them importing torch through cpo.cli): the core cases run
# by default, the others with -m slow.
CORE_ERRORS = ("a directory", "missing file", "empty reference", "scorer", "nan")


@pytest.mark.parametrize("group", ["core", pytest.param("more", marks=pytest.mark.slow)])
def test_hydra_app_expected_errors_are_one_sentence(tmp_path, monkeypatch, group):
    """Every expected error: ``error: ...`` naming the file, line or key, exit 2, no traceback, no metrics.json."""
    s, r, h = _write(tmp_path / "s.de", SRC), _write(tmp_path / "r.en", REF), _write(tmp_path / "h.en", HYP)
    _write(tmp_path / "short.en", HYP[:2])
    _write(tmp_path / "blank_ref.en", [REF[0], "", REF[2]])
    _write(tmp_path / "nan.en", [HYP[0], "BAD", HYP[2]])
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    one = ["src=s.de", "ref=r.en", "src_lang=de", "tgt_lang=en"]
    cases = {
        "no input mode": ([], "give exactly one input mode: src/ref/hyp (+src_lang/tgt_lang), directions, or wmt22"),
        "two modes": ([*one, "hyp=h.en", "wmt22.system=X"], "got src/ref/hyp and wmt22"),
        "a directory": ([*one, "hyp=adir"], f"hyp={tmp_path / 'adir'}: is a directory, not a file"),
        "missing file": (["src=s.de", "ref=nope.en", "hyp=h.en", "src_lang=de", "tgt_lang=en"],
                         f"ref={tmp_path / 'nope.en'}: no such file"),
        "misaligned": ([*one, "hyp=short.en"], "files are not aligned"),
        "empty reference": (["src=s.de", "ref=blank_ref.en", "hyp=h.en", "src_lang=de", "tgt_lang=en"],
                            f"{tmp_path / 'blank_ref.en'}:2: empty reference line"),
        "language": (["src=s.de", "ref=r.en", "hyp=h.en", "src_lang=xx", "tgt_lang=en"],
                     "src_lang/tgt_lang: unknown language code 'xx' in xx-en"),
        "scorer": ([*one, "hyp=h.en", "scorers=[nope]"], "scorers[0]: unknown scorer 'nope'"),
        "metric": ([*one, "hyp=h.en", "metrics=[bleu,chrf++]"],
                   "metrics=['bleu', 'chrf++']: give distinct names among bleu"),
        "wmt22 root": (["wmt22.root=afile", "wmt22.system=X"], f"{tmp_path / 'afile'}: is a file, not a folder"),
        "nan": ([*one, "hyp=nan.en", "metrics=[bleu]", "scorers=[{_target_: test_evaluation.NaNScorer}]"],
                f"{tmp_path / 'nan.en'}:2: scorer 'nan' (length/v1) gave nan for the hypothesis 'BAD'"),
    }
    names = [k for k in cases if (k in CORE_ERRORS) == (group == "core")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]))
    procs = run_apps("evaluate.py", [[*cases[k][0], f"hydra.run.dir={tmp_path / k.replace(' ', '_')}"] for k in names],
                     tmp_path)
    for name, proc in zip(names, procs):
        message = cases[name][1]
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert proc.stderr.startswith("error: ") and message in proc.stderr, (name, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (name, proc.stderr)
        assert not (tmp_path / name.replace(" ", "_") / "metrics.json").exists(), name
    assert sacrebleu_tokenizer("en") == "13a"


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
    with pytest.raises(FileNotFoundError, match="no such folder"):
        wmt22_directions(tmp_path / "absent", "ALMA-13B-R")


@pytest.mark.parametrize("system", sorted(PUBLISHED))
def test_wmt22_bleu_averages_match_published(system):
    if not WMT22.is_dir():
        pytest.skip(f"shared WMT'22 data not found at {WMT22} (set CPO_SHARED_DATA)")
    summary = summarize(evaluate_directions(wmt22_directions(WMT22, system), metrics=("bleu",), health=False))
    xx_en, en_xx = summary["xx->en"]["bleu"], summary["en->xx"]["bleu"]
    print(f"\n{system}: corpus BLEU xx->en {xx_en:.4f}, en->xx {en_xx:.4f}")
    assert round(xx_en, 2) == pytest.approx(PUBLISHED[system][0], abs=0.01)
    assert round(en_xx, 2) == pytest.approx(PUBLISHED[system][1], abs=0.01)
    assert len(summary["xx->en"]["directions"]) == len(summary["en->xx"]["directions"]) == 5


def test_max_sentences_and_a_progress_line_per_direction_and_metric(tmp_path):
    """A smoke test of the first N sentences (a hypothesis file that generate.py max_sentences=N wrote), and one
    line per direction and metric as each is done, so a long evaluation never looks like a hang."""
    args = []
    for direction, (s, r, h) in {"de-en": (SRC, REF, HYP), "en-de": (REF, SRC, SRC[:2])}.items():
        for key, lines in (("src", s), ("ref", r), ("hyp", h)):
            args.append(f"+directions.{direction}.{key}={_write(tmp_path / f'{direction}.{key}', lines)}")
    common = [*args, "metrics=[bleu,chrf]", "scorers=[chrf]", "progress=false"]
    proc = _run_app([*common, "max_sentences=2", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    de = metrics["directions"]["de-en"]
    assert de["n"] == metrics["directions"]["en-de"]["n"] == 2
    assert de["bleu"] == corpus_metrics(HYP[:2], REF[:2], "en", metrics=["bleu"])["bleu"]
    log = proc.stdout + proc.stderr
    for direction, i in (("de-en", 1), ("en-de", 2)):
        for name in ("bleu", "chrf", "sentence_chrf", "health checks"):
            assert sum(f"{direction} ({i}/2): {name} " in line for line in log.splitlines()) == 1, (direction, name)
    assert "max_sentences=2: the first 2 sentences of each direction only" in log
    # Without max_sentences the 2-line hypothesis file of a 3-line test set is refused, as before.
    proc = _run_app([*common, f"hydra.run.dir={tmp_path / 'run2'}"], cwd=tmp_path)
    assert proc.returncode == 2 and "files are not aligned" in proc.stderr and "en-de.hyp (2 lines)" in proc.stderr
