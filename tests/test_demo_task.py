"""The demo's synthetic task: language rules, flaws, simulated systems and the rule-based QE."""
import random
import re

import pytest

from cpo.demo import (
    DEFAULT_SYSTEMS,
    ERROR_TYPES,
    FLAWS,
    LEXICON,
    ZORBISH_WORDS,
    DemoQualityEstimator,
    DemoSystem,
    apply_flaw,
    gilded_references,
    resolve_flaw,
    sample_sentences,
    translate,
)
from cpo.demo.language import ENGLISH_WORDS
from cpo.languages import language_name

QE = DemoQualityEstimator()
NO_ERRORS = {kind: 0 for kind in ERROR_TYPES}


def errors_of(source: str, hypothesis: str) -> dict[str, int]:
    return {kind: count for kind, count in QE.explain(source, hypothesis).items() if count}


def flawed_share(sources: list[str], outputs: list[str]) -> float:
    return sum(QE.explain(s, o) != NO_ERRORS for s, o in zip(sources, outputs)) / len(sources)


@pytest.fixture(scope="module")
def sentences():
    return sample_sentences(2000, seed=7)


def test_language_is_registered():
    assert language_name("zb") == "Zorbish"


def test_vocabulary_is_invented_one_to_one_and_of_the_planned_size():
    assert 80 <= len(ZORBISH_WORDS) <= 120
    assert len(ZORBISH_WORDS) == len(LEXICON) == len({word.english for word in LEXICON})
    assert all(re.fullmatch(r"[a-z]+", word) for word in ZORBISH_WORDS)
    # A Zorbish word that is also an English form would make "untranslated" undetectable.
    assert not ZORBISH_WORDS & ENGLISH_WORDS


@pytest.mark.parametrize("source, english", [
    ("brelk ruvi duvo vosh vidrak", "two red cats saw the dog"),
    ("zarvo enk gubbo grondu trez flinto jagrun", "one king chased three big frogs quickly"),
    ("droxu hoyvek kikkor", "the dragon kicked today"),
    ("kedrav novvi pilpo zuzzem enk sorgvel farbol", "nine farmers painted one sleepy rabbit carefully"),
    ("fesko oskun", "the girl heard"),
    ("  brelk   ruvi duvo vosh vidrak ", "two red cats saw the dog"),
])
def test_translate_by_hand(source, english):
    assert translate(source) == english


@pytest.mark.parametrize("source, named", [
    ("brelk blorp vidrak", "blorp"),
    ("brelk vidrak vosh", "vosh"),  # verb not last
    ("ruvi brelk vidrak", "ruvi"),  # adjective before the noun
    ("brelk duvo ruvi vidrak", "ruvi"),  # number before the adjective
    ("brelk vosh", "verb"),  # no verb
    ("Brelk vidrak", "Brelk"),
])
def test_translate_rejects_and_names_the_word(source, named):
    with pytest.raises(ValueError, match=named):
        translate(source)
    with pytest.raises(ValueError):
        translate("   ")


def test_sampling_is_deterministic_distinct_and_bounded():
    first = sample_sentences(300, seed=3)
    assert first == sample_sentences(300, seed=3)
    assert first != sample_sentences(300, seed=4)
    assert len({s.source for s in first}) == 300
    for s in first:
        assert 3 <= len(s.source.split()) <= 10
        assert s.translation == translate(s.source)
    # The global random state is neither used nor disturbed.
    random.seed(0)
    before = random.random()
    random.seed(0)
    sample_sentences(10, seed=3)
    assert random.random() == before


def test_sampling_covers_the_vocabulary(sentences):
    used = {word for s in sentences for word in s.source.split()}
    assert used == ZORBISH_WORDS


@pytest.mark.parametrize("flaw", FLAWS)
def test_each_flaw_changes_the_text_and_is_detected_as_itself(sentences, flaw):
    applicable = [s for s in sentences[:400] if resolve_flaw(s.translation, flaw) == flaw]
    assert len(applicable) > 100
    for k, s in enumerate(applicable):
        flawed = apply_flaw(s.translation, flaw, random.Random(k))
        assert flawed != s.translation
        assert errors_of(s.source, flawed) == {flaw: 1}


def test_wrong_number_keeps_agreement_fluent():
    rng = random.Random(0)
    for _ in range(30):
        flawed = apply_flaw("one red cat saw the dog", "wrong_number", rng)
        number, _, noun = flawed.split()[:3]
        assert number != "one" and noun == "cats"


def test_impossible_flaw_falls_back_in_flaws_order():
    # No number, no adjective, no adverb: only "untranslated" is possible.
    assert resolve_flaw("the cat saw the dog", "wrong_number") == "untranslated"
    assert resolve_flaw("the cat saw the dog", "omission") == "untranslated"
    assert resolve_flaw("the red cat saw the dog", "wrong_number") == "omission"
    assert resolve_flaw("two cats saw the dog", "omission") == "wrong_number"
    assert apply_flaw("the cat saw the dog", "wrong_number", random.Random(0)) != "the cat saw the dog"
    with pytest.raises(ValueError, match="unknown flaw"):
        apply_flaw("the cat saw the dog", "typo", random.Random(0))


def test_qe_is_graded(sentences):
    for k, s in enumerate(sentences[:300]):
        rng = random.Random(k)
        first = resolve_flaw(s.translation, rng.choice(FLAWS))
        one = apply_flaw(s.translation, first, rng)
        # A second wrong_number may hit the same number word again: still one error, so avoid it.
        two = apply_flaw(one, "untranslated" if first == "wrong_number" else rng.choice(FLAWS), rng)
        assert sum(QE.explain(s.source, two).values()) == 2
        garbage = " ".join(rng.choice(["zq", "xx", "?", "blah"]) for _ in range(len(s.translation.split())))
        scores = QE.score([s.source] * 5, [s.translation, one, two, garbage, ""])
        assert 1.0 == scores[0] > scores[1] > scores[2] > scores[3] == scores[4] == 0.0


@pytest.mark.parametrize("hypothesis, errors", [
    ("two red cats saw the dog", {}),
    ("Two red cats   saw the DOG", {}),
    ("two red cats the dog saw", {"word_order": 1}),
    ("two red cats saw the dog .", {"insertion": 1}),
    ("two red cats saw saw the dog", {"insertion": 1}),
    ("two red cat saw the dog", {"agreement": 1}),
    ("two red cats saw the dogs", {"agreement": 1}),
    ("two red cats saw the bird", {"mistranslation": 1}),
    ("two red cats saw the zq", {"garbage": 1}),
    ("two red cats vidrak the dog", {"untranslated": 1}),
    ("two ruvi cats saw the dog", {"untranslated": 1}),
    ("three red cats saw the dog", {"wrong_number": 1}),
    ("two cats saw the dog", {"omission": 1}),
    ("three cats saw the dog", {"omission": 1, "wrong_number": 1}),
])
def test_explain_names_each_error(hypothesis, errors):
    assert errors_of("brelk ruvi duvo vosh vidrak", hypothesis) == errors


def test_qe_never_raises_on_weird_output():
    weird = ["", " ", "\n\t", ".", "!!!", "two red cats saw the dog" * 50, "two " * 5000, "é ü 日本語 🙂",
             "cats cats cats", "brelk ruvi duvo vosh vidrak", "2 red cats saw the dog", "\x00\x01", "a" * 100000]
    scores = QE.score(["brelk ruvi duvo vosh vidrak"] * len(weird), weird)
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert QE.score(["brelk ruvi duvo vosh vidrak"], ["two red cats saw the dog"]) == [1.0]
    with pytest.raises(ValueError):
        QE.score(["brelk vidrak"], [])
    assert QE.name == "demo_qe" and "v1" in QE.identity


def test_gilded_references_have_the_configured_flaw_share(sentences):
    references = gilded_references(sentences, flaw_rate=0.3, seed=1)
    assert references == gilded_references(sentences, flaw_rate=0.3, seed=1)
    sources = [s.source for s in sentences]
    assert abs(flawed_share(sources, references) - 0.3) < 0.035
    # A flawed reference carries exactly one flaw; per-sentence seeding makes subsets agree.
    assert all(sum(QE.explain(s, r).values()) <= 1 for s, r in zip(sources, references))
    assert gilded_references(sentences[:50], flaw_rate=0.3, seed=1) == references[:50]
    assert gilded_references(sentences[:50], flaw_rate=0.0, seed=1) == [s.translation for s in sentences[:50]]


@pytest.mark.parametrize("system", DEFAULT_SYSTEMS, ids=lambda system: system.name)
def test_systems_have_their_flaw_rate_and_ignore_batch_order(sentences, system):
    sources = [s.source for s in sentences]
    outputs = system.translate(sentences, seed=0)
    assert abs(flawed_share(sources, outputs) - system.flaw_rate) < 0.04
    assert system.translate(sources[::-1], seed=0) == outputs[::-1]
    assert system.translate(sources[:100], seed=1) != outputs[:100]
    # Hard negatives: flawed outputs stay near-correct (one or two errors).
    assert all(sum(QE.explain(s, o).values()) <= 2 for s, o in zip(sources, outputs))


def test_strong_system_beats_gilded_references_beats_weak_system(sentences):
    sources = [s.source for s in sentences]
    strong, weak = DEFAULT_SYSTEMS
    mean = {name: sum(QE.score(sources, outputs)) / len(sources) for name, outputs in [
        ("strong", strong.translate(sources, seed=0)),
        ("reference", gilded_references(sentences, flaw_rate=0.3, seed=0)),
        ("weak", weak.translate(sources, seed=0)),
    ]}
    assert mean["strong"] > mean["reference"] > mean["weak"]


def test_system_configuration_is_validated():
    with pytest.raises(ValueError, match="unknown flaws"):
        DemoSystem("bad", 0.1, {"typo": 1.0})
    with pytest.raises(ValueError, match="flaw_rate"):
        DemoSystem("bad", 1.5, {"omission": 1.0})
