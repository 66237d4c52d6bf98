"""Zorbish (`zb`): the embedded demo's synthetic source language, its rule-based English, and MT flaws.

Why a synthetic language: the default demo must show the CPO paper's point (references are
"gilded", and preferring the better of near-correct candidates beats imitating references) on a
laptop CPU in minutes. That needs a task a tiny transformer learns from ~3000 examples, where
the true quality of ANY output is known exactly, so a rule-based quality estimator can stand in
for COMET-KIWI/XCOMET. Hence: one word per meaning in each language (no synonyms, no
ambiguity), a fixed reordering, and a little English morphology (plural -s).

Grammar (word classes are disjoint, so parsing never backtracks)::

    Zorbish:  SUBJECT [OBJECT] [ADVERB] VERB      noun phrase = noun [adjective] [number]
    English:  SUBJECT VERB [OBJECT] [ADVERB]      noun phrase = (number | "the") [adjective] noun

An English noun takes -s when its number word is above one; a phrase without a number takes
"the". Example: ``brelk ruvi duvo vosh vidrak`` -> ``two red cats saw the dog``.

Flaws are the errors real MT systems make on near-correct output (section 1 of SPEC.md: an
omitted detail, a wrong number, an untranslated word). Each keeps the sentence fluent, so flawed
outputs are the hard negatives CPO is meant to learn from.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

NOUN, ADJECTIVE, VERB, ADVERB, NUMBER, DETERMINER = "noun", "adjective", "verb", "adverb", "number", "determiner"

# English has a determiner where Zorbish has none; it has no Zorbish counterpart, so it is not in LEXICON.
THE = "the"


@dataclass(frozen=True)
class Word:
    """One meaning: its English lemma (nouns in the singular), its Zorbish form and its word class."""

    english: str
    zorbish: str
    pos: str


def _words(pos: str, pairs: Iterable[tuple[str, str]]) -> tuple[Word, ...]:
    return tuple(Word(english, zorbish, pos) for english, zorbish in pairs)


# Nouns are all regular (plural = +s) so English morphology is one rule a tiny model can learn.
_NOUNS = _words(NOUN, (
    ("cat", "brelk"), ("dog", "vosh"), ("bird", "tiplu"), ("horse", "granzo"), ("farmer", "kedrav"),
    ("teacher", "sulmeth"), ("doctor", "ravoni"), ("baker", "pluzek"), ("king", "zarvo"),
    ("queen", "imbelu"), ("girl", "fesko"), ("boy", "drumpa"), ("friend", "olvask"),
    ("snake", "sizzek"), ("frog", "gubbo"), ("goat", "mekra"), ("lion", "trossul"),
    ("tiger", "yanvik"), ("rabbit", "pilpo"), ("duck", "kwenno"), ("sailor", "horvast"),
    ("singer", "lulemi"), ("painter", "stravod"), ("student", "nemzik"), ("monkey", "chubra"),
    ("robot", "vextol"), ("pirate", "gorlax"), ("wizard", "zimbral"), ("dragon", "droxu"),
    ("knight", "kelvash"),
))
_ADJECTIVES = _words(ADJECTIVE, (
    ("red", "ruvi"), ("blue", "azzel"), ("green", "vertok"), ("small", "pimmo"), ("big", "grondu"),
    ("old", "ulvar"), ("young", "neffi"), ("happy", "jolbi"), ("angry", "grask"), ("tired", "sumvo"),
    ("clever", "klibbet"), ("brave", "dostra"), ("quiet", "shulum"), ("loud", "brammok"),
    ("tall", "talvuk"), ("lazy", "lozzo"), ("hungry", "hambik"), ("sleepy", "zuzzem"),
    ("proud", "prelvo"), ("shy", "skimmi"),
))
# Past tense: English past verbs do not agree with the subject, which keeps agreement inside the noun phrase.
_VERBS = _words(VERB, (
    ("saw", "vidrak"), ("heard", "oskun"), ("watched", "blimmet"), ("followed", "sekvor"),
    ("pushed", "pukrath"), ("pulled", "trovvik"), ("helped", "hulpen"), ("called", "kolvat"),
    ("carried", "bortex"), ("fed", "nompa"), ("liked", "lubbish"), ("visited", "vizzum"),
    ("painted", "farbol"), ("washed", "waskri"), ("chased", "jagrun"), ("met", "tressov"),
    ("found", "fundrik"), ("kicked", "kikkor"), ("thanked", "dankol"), ("greeted", "grelzo"),
))
_ADVERBS = _words(ADVERB, (
    ("quickly", "flinto"), ("slowly", "langsu"), ("quietly", "shushka"), ("loudly", "bromli"),
    ("happily", "jolbeko"), ("sadly", "tristu"), ("often", "oftram"), ("today", "hoyvek"),
    ("again", "wedrum"), ("carefully", "sorgvel"),
))
# In counting order: a number word's value is its position + 1.
_NUMBERS = _words(NUMBER, (
    ("one", "enk"), ("two", "duvo"), ("three", "trez"), ("four", "fendo"), ("five", "pentu"),
    ("six", "hexu"), ("seven", "sebbo"), ("eight", "oktiv"), ("nine", "novvi"),
))

LEXICON: tuple[Word, ...] = _NOUNS + _ADJECTIVES + _VERBS + _ADVERBS + _NUMBERS
NUMBER_VALUES: dict[str, int] = {word.english: value for value, word in enumerate(_NUMBERS, 1)}

_BY_ZORBISH: dict[str, Word] = {word.zorbish: word for word in LEXICON}
_BY_ENGLISH: dict[str, Word] = {word.english: word for word in LEXICON}
# Every English surface form -> (meaning, is a plural noun); plural nouns are the only inflection.
_ENGLISH_FORMS: dict[str, tuple[Word, bool]] = {
    **{word.english: (word, False) for word in LEXICON},
    **{word.english + "s": (word, True) for word in _NOUNS},
}

ZORBISH_WORDS: frozenset[str] = frozenset(_BY_ZORBISH)
ENGLISH_WORDS: frozenset[str] = frozenset(_ENGLISH_FORMS) | {THE}

# Sampling shape: common optional parts make every flaw type applicable to most sentences,
# and the chosen rates keep sources at 3-8 words (the object or the adverb is always present).
_P_OBJECT = 0.7
_P_ADVERB = 0.5
_P_ADJECTIVE = 0.5
_P_NUMBER = 0.5
# How many draws per requested sentence before accepting duplicates (the language has billions of
# sentences, so this only matters for absurd n).
_DRAWS_PER_SENTENCE = 20


def lookup_zorbish(token: str) -> Word | None:
    """The meaning of a Zorbish word, or None."""
    return _BY_ZORBISH.get(token)


def lookup_english(token: str) -> tuple[Word, bool] | None:
    """The meaning of an English surface form and whether it is a plural noun; None for "the" (no Zorbish
    word) and non-words."""
    return _ENGLISH_FORMS.get(token)


def inflect(noun: str, plural: bool) -> str:
    return noun + "s" if plural else noun


@dataclass(frozen=True)
class NounPhrase:
    """English lemmas of a noun phrase; number is a number word or None (then English says "the")."""

    noun: str
    adjective: str | None = None
    number: str | None = None

    def zorbish(self) -> list[str]:
        lemmas = (self.noun, self.adjective, self.number)
        return [_BY_ENGLISH[lemma].zorbish for lemma in lemmas if lemma is not None]

    def english(self) -> list[str]:
        plural = self.number is not None and NUMBER_VALUES[self.number] > 1
        adjective = [self.adjective] if self.adjective else []
        return [self.number or THE, *adjective, inflect(self.noun, plural)]


@dataclass(frozen=True)
class Clause:
    """The parsed structure both languages render; translation is parse-then-render."""

    subject: NounPhrase
    verb: str
    obj: NounPhrase | None = None
    adverb: str | None = None

    def zorbish(self) -> str:
        words = self.subject.zorbish()
        if self.obj:
            words += self.obj.zorbish()
        if self.adverb:
            words.append(_BY_ENGLISH[self.adverb].zorbish)
        words.append(_BY_ENGLISH[self.verb].zorbish)
        return " ".join(words)

    def english(self) -> str:
        words = [*self.subject.english(), self.verb]
        if self.obj:
            words += self.obj.english()
        if self.adverb:
            words.append(self.adverb)
        return " ".join(words)


@dataclass(frozen=True)
class Sentence:
    """A Zorbish source and its correct English translation."""

    source: str
    translation: str


def as_sentence(item: Sentence | str) -> Sentence:
    """Accept a Sentence or a bare source, so callers can pass whichever they hold."""
    return item if isinstance(item, Sentence) else Sentence(item, translate(item))


def parse(source: str) -> Clause:
    """Parse a Zorbish sentence; ValueError names the offending word and its position."""
    tokens = source.split()
    if not tokens:
        raise ValueError("empty Zorbish sentence")
    words = []
    for token in tokens:
        word = _BY_ZORBISH.get(token)
        if word is None:
            raise ValueError(f"unknown Zorbish word {token!r} in {source!r}")
        words.append(word)
    subject, at = _parse_noun_phrase(words, 0, source)
    obj = None
    if at < len(words) and words[at].pos == NOUN:
        obj, at = _parse_noun_phrase(words, at, source)
    adverb = None
    if at < len(words) and words[at].pos == ADVERB:
        adverb, at = words[at].english, at + 1
    verb = _expect(words, at, VERB, source).english
    if at + 1 < len(words):
        extra = words[at + 1].zorbish
        raise ValueError(f"unexpected word {extra!r} after the verb in {source!r} (Zorbish puts the verb last)")
    return Clause(subject, verb, obj, adverb)


def _expect(words: Sequence[Word], at: int, pos: str, source: str) -> Word:
    if at >= len(words):
        raise ValueError(f"{source!r} ends before its {pos}")
    if words[at].pos != pos:
        word = words[at]
        raise ValueError(f"expected a {pos} at word {at + 1} of {source!r}, got {word.zorbish!r} (a {word.pos})")
    return words[at]


def _parse_noun_phrase(words: Sequence[Word], at: int, source: str) -> tuple[NounPhrase, int]:
    noun = _expect(words, at, NOUN, source).english
    at += 1
    adjective = number = None
    if at < len(words) and words[at].pos == ADJECTIVE:
        adjective, at = words[at].english, at + 1
    if at < len(words) and words[at].pos == NUMBER:
        number, at = words[at].english, at + 1
    return NounPhrase(noun, adjective, number), at


def translate(source: str) -> str:
    """The correct English translation of a Zorbish sentence, by rule."""
    return parse(source).english()


def sample_sentences(n: int, seed: int) -> list[Sentence]:
    """n grammatical sentences, distinct sources (unless n approaches the size of the language); same seed,
    same list."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    seen: set[str] = set()
    sentences: list[Sentence] = []
    draws = 0
    while len(sentences) < n:
        clause = _sample_clause(rng)
        source = clause.zorbish()
        draws += 1
        if source in seen and draws < _DRAWS_PER_SENTENCE * n:
            continue
        seen.add(source)
        sentences.append(Sentence(source, clause.english()))
    return sentences


def _sample_noun_phrase(rng: random.Random) -> NounPhrase:
    noun = rng.choice(_NOUNS).english
    adjective = rng.choice(_ADJECTIVES).english if rng.random() < _P_ADJECTIVE else None
    number = rng.choice(_NUMBERS).english if rng.random() < _P_NUMBER else None
    return NounPhrase(noun, adjective, number)


def _sample_clause(rng: random.Random) -> Clause:
    subject = _sample_noun_phrase(rng)
    obj = _sample_noun_phrase(rng) if rng.random() < _P_OBJECT else None
    # A sentence without an object always gets an adverb: two-word sentences teach too little.
    has_adverb = obj is None or rng.random() < _P_ADVERB
    adverb = rng.choice(_ADVERBS).english if has_adverb else None
    return Clause(subject, rng.choice(_VERBS).english, obj, adverb)


# --- Flaws -------------------------------------------------------------------------------------

FLAWS: tuple[str, ...] = ("omission", "wrong_number", "untranslated")

# Which English words each flaw can act on. "untranslated" can hit any content word, and every
# correct translation has a noun and a verb, so it is always applicable: it ends every fallback chain.
_FLAW_SITES: dict[str, frozenset[str]] = {
    "omission": frozenset({ADJECTIVE, ADVERB}),
    "wrong_number": frozenset({NUMBER}),
    "untranslated": frozenset({NOUN, ADJECTIVE, VERB, ADVERB, NUMBER}),
}


def _sites(tokens: Sequence[str], flaw: str) -> list[int]:
    if flaw not in _FLAW_SITES:
        raise ValueError(f"unknown flaw {flaw!r} (known: {', '.join(FLAWS)})")
    wanted = _FLAW_SITES[flaw]
    return [i for i, token in enumerate(tokens) if (form := _ENGLISH_FORMS.get(token)) and form[0].pos in wanted]


def resolve_flaw(translation: str, flaw: str) -> str:
    """The flaw apply_flaw will actually make: `flaw` if the text allows it, else the first that does
    in FLAWS order (omission, wrong_number, untranslated). Example: a sentence without a number
    asked for wrong_number gets an omission, or, with no adjective or adverb either, an untranslated word.

    Falling back (rather than skipping) keeps the configured flaw rate exact.
    """
    tokens = translation.split()
    for candidate in (flaw, *(other for other in FLAWS if other != flaw)):
        if _sites(tokens, candidate):
            return candidate
    raise ValueError(f"no flaw can be applied to {translation!r}: it has no English content word left")


def apply_flaw(translation: str, flaw: str, rng: random.Random) -> str:
    """`translation` with exactly one flaw of type resolve_flaw(translation, flaw); always a different text.

    - omission: drops one adjective or adverb (the sentence stays grammatical, a detail is lost);
    - wrong_number: replaces one number word with another and re-inflects its noun, so the error is fluent;
    - untranslated: puts one content word's Zorbish form in its place (as MT systems copy source words).

    Works on the text, not the source, so flaws stack: a flawed text can take another flaw. (No
    source is needed: the lexicon is one-to-one, so every English word names its Zorbish word.)
    """
    tokens = translation.split()
    flaw = resolve_flaw(translation, flaw)
    at = rng.choice(_sites(tokens, flaw))
    if flaw == "omission":
        del tokens[at]
    elif flaw == "wrong_number":
        _change_number(tokens, at, rng)
    else:
        tokens[at] = _ENGLISH_FORMS[tokens[at]][0].zorbish
    return " ".join(tokens)


def _change_number(tokens: list[str], at: int, rng: random.Random) -> None:
    _set_number(tokens, at, rng.choice([word.english for word in _NUMBERS if word.english != tokens[at]]))


def _set_number(tokens: list[str], at: int, new: str) -> None:
    """Replace the number word at `at` and re-inflect its noun, so the error stays fluent."""
    tokens[at] = new
    noun_at = at + 1
    # Skip the adjective (English, or left untranslated) between the number and its noun.
    while noun_at < len(tokens) and _meaning_pos(tokens[noun_at]) == ADJECTIVE:
        noun_at += 1
    form = _ENGLISH_FORMS.get(tokens[noun_at]) if noun_at < len(tokens) else None
    if form and form[0].pos == NOUN:
        tokens[noun_at] = inflect(form[0].english, NUMBER_VALUES[new] > 1)


def _meaning_pos(token: str) -> str | None:
    form = _ENGLISH_FORMS.get(token)
    word = form[0] if form else _BY_ZORBISH.get(token)
    return word.pos if word else None


def sentence_rng(*parts: object) -> random.Random:
    """A generator seeded from a stable hash of `parts` (Python's hash() is salted per process), so a
    sentence's random choices depend on what it is, not on batch order or on the process."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class Habits:
    """A reference translator's systematic errors: words it always drops, leaves untranslated or confuses.

    Random one-off flaws barely hurt a model trained on the references, because greedy decoding
    recovers the majority translation. Real "gilded" references are flawed systematically (a
    translator's habits), and a model trained on them learns the habits; only preference data
    whose better candidates translate those words can teach them back.
    """

    dropped: frozenset[str]  # English adjectives/adverbs omitted
    untranslated: frozenset[str]  # English content words left in Zorbish
    confused_numbers: dict[str, str]  # English number word -> the one written instead

    def apply(self, translation: str) -> str | None:
        """The translation with every habit applied, or None when no habit word occurs in it."""
        tokens, changed = translation.split(), False
        out: list[str] = []
        for at, token in enumerate(tokens):
            form = _ENGLISH_FORMS.get(token)
            base = form[0].english if form else token
            if base in self.dropped:
                changed = True
                continue
            if base in self.untranslated:
                out.append(form[0].zorbish)
                changed = True
                continue
            out.append(token)
        if not changed and not any(t in self.confused_numbers for t in tokens):
            return None
        text = " ".join(out)
        tokens = text.split()
        for at, token in enumerate(tokens):
            if token in self.confused_numbers:
                _set_number(tokens, at, self.confused_numbers[token])
        return " ".join(tokens)


def reference_habits(seed: int, n_dropped: int = 3, n_untranslated: int = 2, n_confused: int = 1) -> Habits:
    """A seed's habits: a few adjectives/adverbs dropped, nouns/verbs left untranslated, numbers confused."""
    rng = random.Random(f"habits-{seed}")
    droppable = sorted(w.english for w in _ADJECTIVES + _ADVERBS)
    dropped = rng.sample(droppable, n_dropped)
    copyable = sorted(w.english for w in _NOUNS + _VERBS)
    untranslated = rng.sample(copyable, n_untranslated)
    numbers = [w.english for w in _NUMBERS]
    confused = {}
    for word in rng.sample(numbers, n_confused):
        confused[word] = rng.choice([n for n in numbers if n != word])
    return Habits(frozenset(dropped), frozenset(untranslated), confused)


def gilded_references(
    sentences: Sequence[Sentence | str], flaw_rate: float = 0.3, seed: int = 0, habits: Habits | None = None,
    habit_rate: float = 0.9,
) -> list[str]:
    """Human-like references: a share `flaw_rate` carry flaws, the rest are correct.

    With `habits`, a sentence containing a habit word gets the habit's error with probability
    `habit_rate` (these count toward `flaw_rate`); the remaining flawed share gets one random flaw
    (type uniform over FLAWS, after fallback) spread over the other sentences. Choices are per
    sentence (stable hash of seed and source), so a sentence's reference does not depend on which
    other sentences are in the set.
    """
    if not 0.0 <= flaw_rate <= 1.0:
        raise ValueError(f"flaw_rate must be in [0, 1], got {flaw_rate}")
    sentences = [as_sentence(s) for s in sentences]
    habitual = [habits.apply(s.translation) if habits else None for s in sentences]
    n_habit = sum(h is not None for h in habitual) * habit_rate
    n_other = len(sentences) - sum(h is not None for h in habitual)
    # Random flaws fill the rest of the configured share among sentences without a habit word.
    other_rate = max(0.0, flaw_rate * len(sentences) - n_habit) / n_other if n_other else 0.0
    references = []
    for sentence, habit in zip(sentences, habitual):
        rng = sentence_rng("gilded", seed, sentence.source)
        if habit is not None and rng.random() < habit_rate:
            references.append(
                habit if habit != sentence.translation else apply_flaw(sentence.translation, "untranslated", rng)
            )
        elif habit is None and rng.random() < other_rate:
            references.append(apply_flaw(sentence.translation, rng.choice(FLAWS), rng))
        else:
            references.append(sentence.translation)
    return references
