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

**Many candidates** (SPEC section 9: N samples of a policy, one "system" whose every sample is a
candidate): :func:`select_pairs` applies the same rule over all candidates of a source. The tie order
is the candidate order: the reference, then the named systems in the order given, then each sample
system's candidates in their file order (beam rank, or sampling order). A sample whose text equals an
earlier candidate's (after whitespace normalisation) is a *duplicate*: it is counted and takes no part
(it would tie with the earlier one, which wins ties anyway, and best-vs-k-worst would pair one text
twice). Options: ``min_gap`` (a pair whose score gap is below it is dropped, ``score_gap_below_min``)
and ``pairs_per_source=k`` (best vs each of the k lowest-scoring other candidates, each pair checked
alone; k = 1 is the paper's rule exactly).

The rows built from these selections are in ``cpo.pairs.build``; the "noised negatives" ablation in
``cpo.pairs.noise``; the paper's Table-1 win counts in ``cpo.pairs.report``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from cpo.io import DataError
from cpo.text import is_blank, normalize_space


REF = "ref"  # the reference's name among the candidates

# Where a candidate comes from, for the build report's "chosen from samples vs the reference vs systems".
KIND_REFERENCE, KIND_SYSTEM, KIND_SAMPLE = "reference", "systems", "samples"


@dataclass(frozen=True)
class Candidate:
    system: str
    text: str
    score: float
    sample: int | None = None  # index among its system's candidates (a multi-candidate file), None for one output
    duplicate: bool = False    # a sample repeating an earlier candidate's text: left out of the rule

    @property
    def id(self) -> str:
        """``system`` for a single output, ``system#k`` for the k-th (0-based) candidate of a multi-candidate one."""
        return self.system if self.sample is None else f"{self.system}#{self.sample}"

    @property
    def kind(self) -> str:
        if self.sample is not None:
            return KIND_SAMPLE
        return KIND_REFERENCE if self.system == REF else KIND_SYSTEM


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
DROP_SMALL_GAP = "score_gap_below_min"
DROP_REPEATED = "repeated_pair"  # best vs k worst: a rejected text already paired (two named systems agreeing)


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


def select_pairs(candidates: list[Candidate], pairs_per_source: int = 1, min_gap: float = 0.0) -> list[Selection]:
    """The paper's rule over any number of candidates: best vs the worst (or each of the ``pairs_per_source``
    worst), one :class:`Selection` per pair considered, each kept or dropped with its reason.

    Duplicates are left out first; with fewer than two candidates left, one ``fewer_than_two_candidates``
    drop. The best is the first maximum in candidate order; the rejected sides are the other candidates in
    ascending score order (ties: candidate order), the first ``pairs_per_source`` of them. Each pair is
    dropped for equal scores, a gap below ``min_gap``, an empty side or equal texts (in that order of
    reasons), or for repeating an earlier pair's rejected text. With ``pairs_per_source=1`` and no
    duplicates this is :func:`select_pair` (same pair, same reason).
    """
    if pairs_per_source < 1:
        raise ValueError(f"pairs_per_source must be >= 1, got {pairs_per_source}")
    if not min_gap >= 0:
        raise ValueError(f"min_gap must be a number >= 0, got {min_gap}")
    live = [c for c in candidates if not c.duplicate]
    if len(live) < 2:
        return [Selection(None, None, DROP_TOO_FEW)]
    _check_finite(live)
    best = select_chosen(live)  # the first maximum wins ties
    others = sorted((c for c in live if c is not best), key=lambda c: c.score)  # stable: tie order
    out, paired = [], set()
    for worst in others[:pairs_per_source]:
        if best.score == worst.score:
            out.append(Selection(best, worst, DROP_EQUAL_SCORES))
        elif best.score - worst.score < min_gap:
            out.append(Selection(best, worst, DROP_SMALL_GAP))
        elif normalize_space(worst.text) in paired:
            out.append(Selection(best, worst, DROP_REPEATED))
        else:
            out.append(checked_pair(best, worst))
        paired.add(normalize_space(worst.text))
    return out


def _bump(table: dict[str, int], key: str, by: int = 1) -> None:
    table[key] = table.get(key, 0) + by


@dataclass
class BuildCounts:
    """Tallies for the build report: kept / dropped by reason, chosen / rejected per system.

    ``kept`` and ``dropped`` count pairs (with one pair per source, as in the paper, also sources);
    the per-source tallies (``sources``, ``sources_with_pairs``, ``candidates_per_source``) and the
    duplicates per system come from :meth:`add_source`.
    """

    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    chosen_by_system: dict[str, int] = field(default_factory=dict)
    rejected_by_system: dict[str, int] = field(default_factory=dict)
    # Candidates left out of a source's comparison because the system's text (or score) is missing.
    missing_by_system: dict[str, int] = field(default_factory=dict)
    # Empty hypotheses per system (scored like any text; a pair with an empty side is dropped).
    empty_by_system: dict[str, int] = field(default_factory=dict)
    # Many candidates: samples that repeat an earlier candidate's text, per system (left out of the rule);
    # where the chosen / rejected side came from (reference, systems, samples); sources and their candidates.
    duplicates_by_system: dict[str, int] = field(default_factory=dict)
    chosen_by_kind: dict[str, int] = field(default_factory=dict)
    rejected_by_kind: dict[str, int] = field(default_factory=dict)
    sources: int = 0
    sources_with_pairs: int = 0
    candidates_per_source: dict[int, int] = field(default_factory=dict)  # candidates (duplicates too) -> sources

    def add(self, sel: Selection) -> None:
        if not sel.kept:
            _bump(self.dropped, sel.dropped)
            return
        self.kept += 1
        _bump(self.chosen_by_system, sel.chosen.system)
        _bump(self.rejected_by_system, sel.rejected.system)
        _bump(self.chosen_by_kind, sel.chosen.kind)
        _bump(self.rejected_by_kind, sel.rejected.kind)

    def add_source(self, candidates: list[Candidate], selections: list[Selection]) -> None:
        """One source's candidates and the pairs considered for it (kept or dropped)."""
        for sel in selections:
            self.add(sel)
        self.sources += 1
        self.sources_with_pairs += any(sel.kept for sel in selections)
        n = len(candidates)
        self.candidates_per_source[n] = self.candidates_per_source.get(n, 0) + 1
        for c in candidates:
            if c.duplicate:
                _bump(self.duplicates_by_system, c.system)

    def as_dict(self) -> dict:
        out = {
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "dropped_total": sum(self.dropped.values()),
            "chosen_by_system": dict(self.chosen_by_system),
            "rejected_by_system": dict(self.rejected_by_system),
            "missing_by_system": dict(self.missing_by_system),
            "empty_by_system": dict(self.empty_by_system),
        }
        if self.sources:
            per = self.candidates_per_source
            total = sum(k * v for k, v in per.items())
            out.update(
                sources=self.sources, sources_with_pairs=self.sources_with_pairs,
                candidates_per_source={"min": min(per), "mean": round(total / self.sources, 4), "max": max(per),
                                       "histogram": {str(k): per[k] for k in sorted(per)}},
                duplicates_by_system=dict(self.duplicates_by_system),
                chosen_by_kind=dict(self.chosen_by_kind), rejected_by_kind=dict(self.rejected_by_kind),
            )
        return out

    def merge(self, other: "BuildCounts") -> None:
        """Add another build's tallies (e.g. to total several directions)."""
        self.kept += other.kept
        self.sources += other.sources
        self.sources_with_pairs += other.sources_with_pairs
        for mine, theirs in (
            (self.candidates_per_source, other.candidates_per_source),
            (self.duplicates_by_system, other.duplicates_by_system),
            (self.chosen_by_kind, other.chosen_by_kind),
            (self.rejected_by_kind, other.rejected_by_kind),
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
