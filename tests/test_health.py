"""Tests of cpo.mt.health: the checks that expose a degenerating translator (wrong language, copies, loops,
collapse)."""
from __future__ import annotations

import random

import pytest

from cpo.mt.health import HEALTH_KEYS, copies_source, has_loop, health_checks, language_identifier, length_ratio

from conftest import WMT22

# Sentences of several languages and scripts, a few of them short enough to be hard.
MULTILINGUAL = [
    "The committee will publish its report on Tuesday.", "Der Ausschuss veröffentlicht seinen Bericht am Dienstag.",
    "Výbor zveřejní svou zprávu v úterý.", "Nefndin birtir skýrslu sína á þriðjudag.",
    "Комитет опубликует свой доклад во вторник.",
    "委员会将于星期二发布报告。", "委員会は火曜日に報告書を公表する。",
    "위원회는 화요일에 보고서를 발표할 것이다.",
    "Le comité publiera son rapport mardi.", "Komiteen publiserer rapporten tirsdag.",
    "ok", "", "   ", "12345", "😀😀", "Tap Repair now.", "Jste tam?", "工作日不包括周六。",
]
DE = ["Der Hund sieht die Katze im Garten.", "Das alte Haus steht am Ende der Straße.",
      "Zwei Leute bauen heute ein neues Auto.", "Wir fahren morgen früh nach Berlin."]
EN = ["The dog sees the cat in the garden.", "The old house stands at the end of the street.",
      "Two people are building a new car today.", "We are driving to Berlin early tomorrow."]


def test_the_batched_identifier_gives_langid_answers():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    reference = LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=False)
    lid = language_identifier()
    assert lid is language_identifier()  # built once per process
    texts = MULTILINGUAL + [s.upper() for s in MULTILINGUAL] + [a + " " + b for a, b in zip(DE, EN)]
    assert lid.classify(texts) == [reference.classify(t)[0] for t in texts]
    assert lid.classify(MULTILINGUAL[:8]) == ["en", "de", "cs", "is", "ru", "zh", "ja", "ko"]
    assert lid.classify([]) == []


def test_the_batched_identifier_matches_langid_on_real_sentences():
    if not WMT22.is_dir():
        pytest.skip(f"shared WMT'22 data not found at {WMT22} (set CPO_SHARED_DATA)")
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    reference = LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=False)
    texts = []
    for path in sorted((WMT22 / "wmt-testset").glob("*/test.*")):
        lines = path.read_text(encoding="utf-8").splitlines()
        texts += random.Random(path.name).sample(lines, 60)
    assert len(texts) == 20 * 60
    assert language_identifier().classify(texts) == [reference.classify(t)[0] for t in texts]


def test_off_target_and_output_in_the_source_language():
    healthy = health_checks(EN, DE, EN, "en", "de")
    assert list(healthy) == list(HEALTH_KEYS)
    assert healthy["off_target"] == 0 and healthy["off_target_src"] == 0
    # A model that stopped translating: half of its outputs are German, one is French.
    drifted = health_checks(EN[:2] + [DE[2], "Nous allons à Berlin demain matin."], DE, EN, "en", "de")
    assert drifted["off_target"] == 0.5 and drifted["off_target_src"] == 0.25
    # Languages the identifier does not know: the rate is absent, not a 0 that reads as healthy.
    demo = health_checks(EN, ["kedrav granzo talvuk", "mekra shulum", "brelk zuzzem", "enk zarvo"], EN, "en", "zb")
    assert demo["off_target"] == 0 and "off_target_src" not in demo
    unknown_target = health_checks(EN, DE, EN, "zb", "de")
    assert "off_target" not in unknown_target and "off_target_src" not in unknown_target
    assert "off_target_src" not in health_checks(EN, DE, EN, "en")  # no source language given
    # Norwegian: the identifier's nb / nn answers are on target for "no".
    assert health_checks(["Komiteen publiserer rapporten sin på tirsdag."], ["x"], ["y"], "no")["off_target"] == 0


def test_copies_of_the_source_are_counted():
    hyps = [DE[0], DE[1].replace("alte", "neue"), EN[2], "", DE[3].upper() + "  "]
    with pytest.raises(ValueError, match="5 hypotheses but 4 sources"):
        copies_source(hyps, DE)
    flags = copies_source(hyps, DE + [DE[3]]).tolist()
    # exact copy, a copy with one word changed, a real translation, an empty output, a copy up to case and spacing
    assert flags == [True, True, False, False, True]
    assert copies_source(["ab", "ab", "a"], ["AB", "ac", "b"]).tolist() == [True, False, False]  # short texts: equality
    assert health_checks(DE, DE, EN, "en", "de")["copy_rate"] == 1.0
    # Names and numbers copied on purpose are rare on real data (see test_health_of_real_wmt22_outputs).
    assert copies_source(["Berlin, 2022."], ["Berlin, 2022."]).tolist() == [True]


@pytest.mark.parametrize("text, lang, loops", [
    ("the the the the the the the the the the the the", "en", True),      # 12 copies of one word
    ("the the the the the the the the the the the", "en", False),         # 11: not enough
    ("ha ha ha, very very very good", "en", False),
    ("I am fine. " * 3, "en", False),                                      # 3 x 3 words = 9 units
    ("I am fine now. " * 3, "en", True),                                   # 3 x 4 words
    ('"League of Legends": ' * 5 + "the end", "en", True),
    ("go on go on go on go on go on go on", "en", True),                  # 6 copies of two words
    ("It has, as we said, been the case that it has been the case that it has been", "en", False),
    ("我们我们我们我们我们我们", "zh", True),                                  # 6 x 2 characters
    ("我们我们我们我们我们", "zh", False),
    ("补偿金额为500英镑、1000英镑和2500英镑。", "zh", False),  # repeated, but not back to back
    ("爱尔兰橄榄球队" * 3, "zh", True),
    ("", "en", False),
])
def test_loops(text, lang, loops):
    assert has_loop(text, lang) is loops


def test_length_ratio_counts_words_or_characters():
    assert length_ratio(["a b c", "d"], ["a b", "c d e f"], "en") == pytest.approx(4 / 6)
    assert length_ratio(["今天 好", "我"], ["今天很好", "我们"], "zh") == pytest.approx(4 / 6)
    assert length_ratio(["今天很好"], ["今天很好 ok"], "de") == pytest.approx(1 / 2)


def test_empty_outputs_are_counted_and_score_nothing_else():
    hyps = ["", " \u200b ", EN[2], "\t"]
    h = health_checks(hyps, DE, EN, "en", "de")
    assert h["empty"] == 3 and h["off_target"] == 0 and h["copy_rate"] == 0 and h["repetition"] == 0
    assert h["length_ratio"] == pytest.approx(len(EN[2].split()) / sum(len(e.split()) for e in EN))
    with pytest.raises(ValueError, match="2 hypotheses, 3 sources"):
        health_checks(EN[:2], DE[:3], EN[:2], "en")


def test_health_of_real_wmt22_outputs():
    """On real data: the references' floor, and the copies and loops of real systems found where they are."""
    if not WMT22.is_dir():
        pytest.skip(f"shared WMT'22 data not found at {WMT22} (set CPO_SHARED_DATA)")

    def read(*parts):
        return WMT22.joinpath(*parts).read_text(encoding="utf-8").splitlines()

    for pair in ("deen", "ende", "ruen", "enzh"):
        s, t = pair[:2], pair[2:]
        src, ref = read("wmt-testset", pair, f"test.{s}-{t}.{s}"), read("wmt-testset", pair, f"test.{s}-{t}.{t}")
        floor = health_checks(ref, src, ref, t, s)
        assert floor["repetition"] == 0 and floor["copy_rate"] <= 0.002 and floor["empty"] == 0, (pair, floor)
        assert floor["off_target"] <= 0.03 and floor["length_ratio"] == 1.0, (pair, floor)
    src, ref = read("wmt-testset", "ende", "test.en-de.en"), read("wmt-testset", "ende", "test.en-de.de")
    alma = health_checks(read("ALMA-13B-LoRA", "ende", "test.en-de.de"), src, ref, "de", "en")
    assert alma["copy_rate"] >= 0.004 and alma["off_target_src"] >= 0.003  # ALMA-13B-LoRA copies English sources
    src, ref = read("wmt-testset", "enzh", "test.en-zh.en"), read("wmt-testset", "enzh", "test.en-zh.zh")
    assert health_checks(read("ALMA-13B-LoRA", "enzh", "test.en-zh.zh"), src, ref, "zh", "en")["repetition"] > 0
