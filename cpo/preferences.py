"""Candidates -> (chosen, rejected) by the rule of the CPO paper (section 3.1, SPEC section 2).

Each source has scored candidate translations from named systems. The preferred translation is
the highest-scoring one and the dis-preferred the lowest; ties go to the first candidate in the
configured order (the original code's order [ref, gpt4, alma]). Unlike the original code, a pair
whose two sides have equal texts or equal scores is dropped (it teaches nothing, or the opposite
of nothing) and counted by reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field


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
DROP_TOO_FEW = "fewer_than_two_candidates"


def select_pair(candidates: list[Candidate]) -> Selection:
    """argmax / argmin with first-wins ties, dropping degenerate pairs."""
    if len(candidates) < 2:
        return Selection(None, None, DROP_TOO_FEW)
    best = worst = candidates[0]
    for c in candidates[1:]:
        if c.score > best.score:  # strict: an equal later score never displaces an earlier one
            best = c
        if c.score < worst.score:
            worst = c
    if best.score == worst.score:
        return Selection(best, worst, DROP_EQUAL_SCORES)
    if best.text.strip() == worst.text.strip():
        return Selection(best, worst, DROP_EQUAL_TEXTS)
    return Selection(best, worst)


@dataclass
class BuildCounts:
    """Tallies for the build report: kept / dropped by reason, chosen / rejected per system."""

    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    chosen_by_system: dict[str, int] = field(default_factory=dict)
    rejected_by_system: dict[str, int] = field(default_factory=dict)

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
        }


def preference_record(
    source: str,
    src_lang: str,
    tgt_lang: str,
    sel: Selection,
    candidates: list[Candidate],
    scorer: str,
    reference: str | None = None,
) -> dict:
    """A row of the project's preference JSONL, with provenance: both sides' systems and all scores."""
    row = {
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "source": source,
        "chosen": sel.chosen.text,
        "rejected": sel.rejected.text,
        "provenance": {
            "scorer": scorer,
            "chosen_system": sel.chosen.system,
            "rejected_system": sel.rejected.system,
            "scores": {c.system: c.score for c in candidates},
        },
    }
    if reference is not None:
        row["reference"] = reference
    return row


def build_pairs(
    sources: list[str],
    candidates: dict[str, list[str]],
    scores: dict[str, list[float]],
    src_lang: str,
    tgt_lang: str,
    scorer: str,
    references: list[str] | None = None,
) -> tuple[list[dict], BuildCounts]:
    """Preference rows for every source from aligned candidate texts and their scores.

    ``candidates`` is ordered: its insertion order is the tie-breaking order (put ``ref`` first to
    follow the paper). ``references`` (optional) travel with each row for SFT-on-reference runs.
    """
    names = list(candidates)
    for name in names:
        if len(candidates[name]) != len(sources) or len(scores[name]) != len(sources):
            raise ValueError(f"candidate system {name!r}: {len(candidates[name])} texts / {len(scores[name])} scores for {len(sources)} sources")
    rows, counts = [], BuildCounts()
    for i, src in enumerate(sources):
        cands = [Candidate(n, candidates[n][i], float(scores[n][i])) for n in names]
        sel = select_pair(cands)
        counts.add(sel)
        if sel.kept:
            rows.append(preference_record(src, src_lang, tgt_lang, sel, cands, scorer, references[i] if references else None))
    return rows, counts
