"""Candidates -> (chosen, rejected) by the rule of the CPO paper (section 3.1, SPEC section 2).

Each source has scored candidate translations from named systems. The preferred translation is
the highest-scoring one and the dis-preferred the lowest; ties go to the first candidate in the
configured order (the original code's order [ref, gpt4, alma]). Unlike the original code, a pair
whose two sides have equal texts or equal scores is dropped (it teaches nothing, or the opposite
of nothing) and counted by reason, and so is a pair with an empty side: an empty hypothesis is
legitimate system output and is scored like any other text, but a preference reader cannot train
on an empty completion. Texts compare after whitespace normalisation, and zero-width characters
count as nothing (``cpo.text``). A non-finite score stops the build: NaN compares false with
everything, so it would silently turn into dropped "equal" pairs.

The rows built from these selections are in ``cpo.pairs.build``; the "noised negatives" ablation in
``cpo.pairs.noise``; the paper's Table-1 win counts in ``cpo.pairs.report``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from cpo.io import DataError
from cpo.text import is_blank, normalize_space


@dataclass(frozen=True)
class Candidate:
    system: str
    text: str
    score: float


@dataclass(frozen=True)
class Selection:
    chosen: Candidate | None
    rejected: Candidate | None
    dropped: str | None = None  # reason when no pair is produced

    @property
    def kept(self) -> bool:
        return self.dropped is None


DROP_EQUAL_SCORES = "equal_scores"
DROP_EQUAL_TEXTS = "equal_texts"
DROP_EMPTY_TEXT = "empty_text"
DROP_TOO_FEW = "fewer_than_two_candidates"


class NonFiniteScore(DataError):
    """A NaN or infinite score reached the selection; the message names the system (and the source, when known)."""


def _check_finite(candidates: list[Candidate]) -> None:
    for c in candidates:
        if not math.isfinite(c.score):
            raise NonFiniteScore(f"system {c.system!r} has a non-finite score ({c.score}); "
                                 "a NaN or infinite score cannot rank translations (check the scorer)")


def pair_problem(chosen: Candidate, rejected: Candidate) -> str | None:
    """Why a (chosen, rejected) pair teaches nothing trainable, or None: an empty side, or the same text."""
    if is_blank(chosen.text) or is_blank(rejected.text):
        return DROP_EMPTY_TEXT
    if normalize_space(chosen.text) == normalize_space(rejected.text):
        return DROP_EQUAL_TEXTS
    return None


def checked_pair(chosen: Candidate, rejected: Candidate) -> Selection:
    """A pair fixed by other means (a human preference), with the same checks as :func:`select_pair`."""
    return Selection(chosen, rejected, pair_problem(chosen, rejected))


def select_pair(candidates: list[Candidate]) -> Selection:
    """argmax / argmin with first-wins ties, dropping degenerate pairs; a non-finite score raises."""
    if len(candidates) < 2:
        return Selection(None, None, DROP_TOO_FEW)
    _check_finite(candidates)
    best = worst = candidates[0]
    for c in candidates[1:]:
        if c.score > best.score:  # strict: an equal later score never displaces an earlier one
            best = c
        if c.score < worst.score:
            worst = c
    if best.score == worst.score:
        return Selection(best, worst, DROP_EQUAL_SCORES)
    return checked_pair(best, worst)


@dataclass
class BuildCounts:
    """Tallies for the build report: kept / dropped by reason, chosen / rejected per system."""

    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    chosen_by_system: dict[str, int] = field(default_factory=dict)
    rejected_by_system: dict[str, int] = field(default_factory=dict)
    # Candidates left out of a source's comparison because the system's text (or score) is missing.
    missing_by_system: dict[str, int] = field(default_factory=dict)
    # Empty hypotheses per system (scored like any text; a pair with an empty side is dropped).
    empty_by_system: dict[str, int] = field(default_factory=dict)

    def add(self, sel: Selection) -> None:
        if not sel.kept:
            self.dropped[sel.dropped] = self.dropped.get(sel.dropped, 0) + 1
            return
        self.kept += 1
        self.chosen_by_system[sel.chosen.system] = self.chosen_by_system.get(sel.chosen.system, 0) + 1
        self.rejected_by_system[sel.rejected.system] = self.rejected_by_system.get(sel.rejected.system, 0) + 1

    def as_dict(self) -> dict:
        return {
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()),
            "chosen_by_system": dict(self.chosen_by_system),
            "rejected_by_system": dict(self.rejected_by_system),
            "missing_by_system": dict(self.missing_by_system),
            "empty_by_system": dict(self.empty_by_system),
        }

    def merge(self, other: "BuildCounts") -> None:
        """Add another build's tallies (e.g. to total several directions)."""
        self.kept += other.kept
        for mine, theirs in (
            (self.dropped, other.dropped),
            (self.chosen_by_system, other.chosen_by_system),
            (self.rejected_by_system, other.rejected_by_system),
            (self.missing_by_system, other.missing_by_system),
            (self.empty_by_system, other.empty_by_system),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v


# --------------------------------------------------------------------------- extensions
# Everything below extends the rule above for the build app (scripts/build_preferences.py):
# missing (empty) candidates, scorer identity and score components in the provenance, the
# "noised negatives" ablation of SPEC section 7, and the win-ratio analysis of the paper's
# Table 1 (how often a system beats the reference).

DROP_NOISE_FAILED = "noise_failed"  # the chosen text is too short to noise (one character)
NEGATIVES = ("real", "noised")


def select_chosen(candidates: list[Candidate]) -> Candidate:
    """The preferred candidate alone: argmax with first-wins ties (the rule of ``select_pair``)."""
    if not candidates:
        raise ValueError("select_chosen: no candidates")
    best = candidates[0]
    for c in candidates[1:]:
        if c.score > best.score:
            best = c
    return best
