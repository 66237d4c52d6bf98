"""A reference-free quality estimator for Zorbish->English that knows the rules.

It stands in for COMET-KIWI / XCOMET in the demo: scored without a reference, from the source
alone, it derives the correct translation by rule and compares the hypothesis with it. Unlike a
neural QE it is exact, so the demo can tell how much of a training method's effect is real.

How a hypothesis is judged: it is lower-cased and split into words and punctuation marks (extra
spaces are free; case is ignored). Its words are aligned to the rule translation's by edit
distance on meanings (a plural noun means its singular), and every difference is one error:

=============  ======  ==========================================================================
type           cost    what
=============  ======  ==========================================================================
omission       0.25    a word of the correct translation is missing
wrong_number   0.30    a number word replaced by another number word
mistranslation 0.30    any other English word in place of the right one
untranslated   0.20    a Zorbish word in the output (in place of a word or extra)
agreement      0.10    a noun's -s disagrees with its number word (or with the meaning, if none)
word_order     0.15    a right word in the wrong place (counted once per moved word)
insertion      0.15    an extra English word or punctuation mark (the target has no punctuation)
garbage        0.30    a token that is neither English nor Zorbish of this task
=============  ======  ==========================================================================

score = max(0, 1 - sum of costs). Wrong meanings cost more than missing or hidden ones, as they
mislead a reader. One flaw of language.FLAWS costs exactly its type's amount. Every correct
translation has at least four words, so an empty output scores 0.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from cpo.demo.language import (
    ADJECTIVE, DETERMINER, NOUN, NUMBER, NUMBER_VALUES, THE, lookup_english, lookup_zorbish, translate,
)

ERROR_COSTS: dict[str, float] = {
    "omission": 0.25,
    "wrong_number": 0.30,
    "mistranslation": 0.30,
    "untranslated": 0.20,
    "agreement": 0.10,
    "word_order": 0.15,
    "insertion": 0.15,
    "garbage": 0.30,
}
ERROR_TYPES: tuple[str, ...] = tuple(ERROR_COSTS)

# Runs of letters or digits are words; any other non-space character is a token on its own.
_TOKEN = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")

# Alignment costs. Substitutions are cheaper than a deletion plus an insertion, and those that
# keep the meaning or the word class are cheaper still, so that among equally short alignments
# the one that explains the output best wins (a copied source word aligns with its meaning).
_SAME_MEANING, _SAME_CLASS, _OTHER, _GAP = 8, 9, 11, 10


@dataclass(frozen=True)
class _Token:
    """A word as the estimator sees it: where it comes from, what it means, its class and plurality."""

    origin: str  # "en", "zb" or "unknown"
    meaning: str | None  # the English lemma it stands for
    pos: str | None
    plural: bool = False

    @property
    def key(self) -> str | None:
        """What must be equal for two tokens to match: only English words match a reference word."""
        return self.meaning if self.origin == "en" else None


def _analyse(token: str) -> _Token:
    if token == THE:
        return _Token("en", THE, DETERMINER)
    english = lookup_english(token)
    if english:
        word, plural = english
        return _Token("en", word.english, word.pos, plural)
    zorbish = lookup_zorbish(token)
    if zorbish:
        return _Token("zb", zorbish.english, zorbish.pos)
    return _Token("unknown", None, None)


@lru_cache(maxsize=65536)
def _reference(source: str) -> tuple[_Token, ...]:
    """The rule translation as tokens; cached because sources are scored many times (one per candidate)."""
    return tuple(_analyse(token) for token in translate(source).split())


def _hypothesis(text: str) -> list[_Token]:
    return [_analyse(token) for token in _TOKEN.findall(text.lower())]


def _substitution_cost(ref: _Token, hyp: _Token) -> int:
    if hyp.key is not None and hyp.key == ref.key:
        return 0
    if hyp.meaning == ref.meaning:
        return _SAME_MEANING
    return _SAME_CLASS if hyp.pos == ref.pos else _OTHER


def _align(ref: Sequence[_Token], hyp: Sequence[_Token]) -> list[tuple[int | None, int | None]]:
    """Minimum-cost alignment as (ref index, hyp index) pairs, None on the side of a gap."""
    rows, cols = len(ref) + 1, len(hyp) + 1
    cost = [[0] * cols for _ in range(rows)]
    for i in range(1, rows):
        cost[i][0] = i * _GAP
    for j in range(1, cols):
        cost[0][j] = j * _GAP
    for i in range(1, rows):
        above, row = cost[i - 1], cost[i]
        for j in range(1, cols):
            row[j] = min(
                above[j - 1] + _substitution_cost(ref[i - 1], hyp[j - 1]),
                above[j] + _GAP,
                row[j - 1] + _GAP,
            )
    pairs: list[tuple[int | None, int | None]] = []
    i, j = rows - 1, cols - 1
    # Walk back, preferring a pairing, then a missing word, then an extra word, so ties break the same way every time.
    while i or j:
        if i and j and cost[i][j] == cost[i - 1][j - 1] + _substitution_cost(ref[i - 1], hyp[j - 1]):
            i, j = i - 1, j - 1
            pairs.append((i, j))
        elif i and cost[i][j] == cost[i - 1][j] + _GAP:
            i -= 1
            pairs.append((i, None))
        else:
            j -= 1
            pairs.append((None, j))
    pairs.reverse()
    return pairs


def _substitution_error(ref: _Token, hyp: _Token) -> str:
    if hyp.origin == "zb":
        return "untranslated"
    if hyp.origin == "unknown":
        return "garbage"
    return "wrong_number" if ref.pos == NUMBER and hyp.pos == NUMBER else "mistranslation"


def _extra_error(hyp: _Token) -> str:
    return {"zb": "untranslated", "unknown": "garbage"}.get(hyp.origin, "insertion")


def _expected_plural(hyp: Sequence[_Token], at: int) -> bool | None:
    """Plurality demanded by the number word before the noun at `at` (across an adjective), if any."""
    before = at - 1
    while before >= 0 and hyp[before].pos == ADJECTIVE:
        before -= 1
    if before >= 0 and hyp[before].origin == "en" and hyp[before].pos == NUMBER:
        return NUMBER_VALUES[hyp[before].meaning] > 1
    return None


def _agreement_errors(ref: Sequence[_Token], hyp: Sequence[_Token], partner: dict[int, int]) -> int:
    """English nouns whose -s disagrees with their own number word; without one (after "the", or a
    copied Zorbish number) the noun must keep the plurality of the reference noun it stands for."""
    errors = 0
    for at, token in enumerate(hyp):
        if token.origin != "en" or token.pos != NOUN:
            continue
        expected = _expected_plural(hyp, at)
        if expected is None and at in partner and ref[partner[at]].pos == NOUN:
            expected = ref[partner[at]].plural
        errors += expected is not None and expected != token.plural
    return errors


def _errors(source: str, hypothesis: str) -> Counter[str]:
    ref, hyp = _reference(source), _hypothesis(hypothesis)
    errors: Counter[str] = Counter()
    partner: dict[int, int] = {}
    missing: list[int] = []
    extra: list[int] = []
    for i, j in _align(ref, hyp):
        if i is None:
            extra.append(j)
        elif j is None:
            missing.append(i)
        else:
            partner[j] = i
            if hyp[j].key != ref[i].key:
                errors[_substitution_error(ref[i], hyp[j])] += 1
    # A missing word that also appears as an extra word elsewhere was moved, not lost.
    for i in missing:
        moved = next((j for j in extra if hyp[j].meaning == ref[i].meaning), None)
        if moved is None:
            errors["omission"] += 1
            continue
        extra.remove(moved)
        partner[moved] = i
        errors["word_order"] += 1
        if hyp[moved].origin == "zb":
            errors["untranslated"] += 1
    for j in extra:
        errors[_extra_error(hyp[j])] += 1
    errors["agreement"] += _agreement_errors(ref, hyp, partner)
    return errors


class DemoQualityEstimator:
    """Reference-free scorer for the demo task: score(sources, hypotheses) -> floats in [0, 1].

    Any hypothesis string is accepted (empty, punctuation, repetitions, very long); a source that
    is not Zorbish raises ValueError, since scoring it would be a caller's bug, not a bad output.
    """

    name = "demo_qe"
    # Bump the version whenever ERROR_COSTS or the rules change: cached scores are keyed by it.
    identity = "demo_qe/v1"

    def score(self, sources: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
        if len(sources) != len(hypotheses):
            raise ValueError(f"{len(sources)} sources but {len(hypotheses)} hypotheses")
        return [self.score_one(source, hypothesis) for source, hypothesis in zip(sources, hypotheses)]

    def score_one(self, source: str, hypothesis: str) -> float:
        penalty = sum(ERROR_COSTS[kind] * count for kind, count in _errors(source, hypothesis).items())
        # Rounded so that sums of costs compare exactly (1 - 0.25 - 0.3 is not 0.45 in floating point).
        return round(max(0.0, 1.0 - penalty), 6)

    def explain(self, source: str, hypothesis: str) -> dict[str, int]:
        """Error counts by type, every type in ERROR_TYPES present (0 when absent)."""
        errors = _errors(source, hypothesis)
        return {kind: errors[kind] for kind in ERROR_TYPES}
