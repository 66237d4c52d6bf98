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
untranslated   0.20    a Zorbish word in the output (plus the meaning error if it means
                       something else than the word it replaces)
agreement      0.10    a noun's -s disagrees with its number word (or with the meaning, if none)
word_order     0.15    a right word in the wrong place (counted once per moved word)
insertion      0.15    an extra English word or punctuation mark (the target has no punctuation)
garbage        0.30    a word that is neither English nor Zorbish of this task, or a
                       punctuation mark in place of a word
=============  ======  ==========================================================================

score = max(0, 1 - sum of costs). Wrong meanings cost more than missing or hidden ones, as they
mislead a reader. One flaw of language.FLAWS costs exactly its type's amount. Translations of
sampled sentences have at least four words, so an empty output scores 0 on them.
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

# Alignment costs. A substitution is cheaper than a deletion plus an insertion, and one that
# keeps the meaning or the word class is cheaper still, so the alignment that explains the output
# best wins (a copied source word aligns with its meaning). Two unrelated substitutions (22) cost
# more than one gap pair (20), so two swapped neighbours read as one moved word.
_SAME_MEANING, _SAME_CLASS, _OTHER, _GAP = 8, 9, 11, 10


@dataclass(frozen=True)
class _Token:
    """A word as the estimator sees it: where it comes from, what it means, its class and plurality."""

    origin: str  # "en", "zb", "punctuation" or "unknown"
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
    return _Token("unknown" if token.isalnum() else "punctuation", None, None)


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


def _substitution_errors(ref: _Token, hyp: _Token) -> list[str]:
    if hyp.origin in ("unknown", "punctuation"):
        return ["garbage"]
    wrong_meaning = "wrong_number" if ref.pos == NUMBER and hyp.pos == NUMBER else "mistranslation"
    if hyp.origin == "en":
        return [wrong_meaning]
    # A copied source word hides its meaning; if that meaning is also wrong, that is a second error.
    return ["untranslated"] if hyp.meaning == ref.meaning else ["untranslated", wrong_meaning]


def _extra_error(hyp: _Token) -> str:
    # An extra punctuation mark is a harmless insertion; an extra nonsense word is garbage.
    return {"zb": "untranslated", "unknown": "garbage"}.get(hyp.origin, "insertion")


def _expected_plural(hyp: Sequence[_Token], at: int) -> bool | None:
    """Plurality demanded by the number word before the noun at `at` (across an adjective), if any.
    A number left in Zorbish still counts with its meaning: copying a word is not a grammar error."""
    before = at - 1
    while before >= 0 and hyp[before].pos == ADJECTIVE:
        before -= 1
    if before >= 0 and hyp[before].pos == NUMBER:
        return NUMBER_VALUES[hyp[before].meaning] > 1
    return None


def _agreement_errors(ref: Sequence[_Token], hyp: Sequence[_Token], partner: dict[int, int]) -> int:
    """English nouns whose -s disagrees with their own number word; without one (after "the", which
    English allows with both) the noun must keep the plurality of the reference noun it stands for."""
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
                errors.update(_substitution_errors(ref[i], hyp[j]))
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
    # Bump the version whenever ERROR_COSTS or the rules change, so scores from different rules are never mixed.
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
