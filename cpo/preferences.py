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

Also here: the "noised negatives" ablation of SPEC section 7 (the rejected side is a noised copy
of the chosen translation, ``NoiseSettings``/``noise_text``) and the paper's Table-1 analysis of
how often a system's translation beats the reference (``win_counts``).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
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


@dataclass(frozen=True)
class NoiseSettings:
    """Word drop and adjacent-word swap applied to the chosen translation (negatives=noised).

    Each token is dropped with probability ``drop_prob`` (never all of them), then each adjacent
    pair of tokens is swapped with probability ``swap_prob``. The random stream is seeded by
    ``seed``, the source and the chosen text, so a sentence's negative does not depend on which
    other sentences are in the build. Tokens are whitespace-separated words, or characters for
    languages written without spaces (Chinese, Japanese, Thai).
    """

    drop_prob: float = 0.15
    swap_prob: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("drop_prob", "swap_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"noise.{name} must be in [0, 1], got {value}")


CHARACTER_LANGUAGES = frozenset({"zh", "ja", "th"})


def _noise_rng(settings: NoiseSettings, source: str, text: str) -> random.Random:
    payload = json.dumps([settings.seed, source, text], ensure_ascii=False)
    return random.Random(int.from_bytes(hashlib.sha256(payload.encode("utf-8")).digest()[:8], "big"))


def noise_text(text: str, source: str, settings: NoiseSettings, tgt_lang: str | None = None) -> tuple[str, dict] | None:
    """A noised copy of ``text`` that differs from it, with counts of the edits; None if impossible.

    When the random edits leave the text unchanged, one edit is forced: a swap of two adjacent
    different tokens, else a drop of one token, else (a one-token text) a swap of two adjacent
    different characters inside it. A text with no such edit (one character, or one repeated
    character) cannot be noised and gives None.
    """
    chars = tgt_lang in CHARACTER_LANGUAGES
    tokens = [c for c in text.strip() if not c.isspace()] if chars else text.split()
    joiner = "" if chars else " "
    original = joiner.join(tokens)
    rng = _noise_rng(settings, source, text)
    kept = [t for t in tokens if rng.random() >= settings.drop_prob]
    if not kept:  # never drop everything: keep one token at random
        kept = [tokens[rng.randrange(len(tokens))]] if tokens else []
    dropped = len(tokens) - len(kept)
    swapped = 0
    i = 0
    while i < len(kept) - 1:
        if rng.random() < settings.swap_prob:
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
            swapped += 1
            i += 2  # a token moves at most once
        else:
            i += 1
    noised = joiner.join(kept)
    forced = None
    if noised == original or not noised.strip():
        kept = list(tokens)
        dropped = swapped = 0
        pairs = [j for j in range(len(kept) - 1) if kept[j] != kept[j + 1]]
        if pairs:
            j = rng.choice(pairs)
            kept[j], kept[j + 1] = kept[j + 1], kept[j]
            swapped, forced = 1, "swap"
        elif len(kept) > 1:
            kept.pop(rng.randrange(len(kept)))
            dropped, forced = 1, "drop"
        elif kept:
            word = kept[0]
            spots = [j for j in range(len(word) - 1) if word[j] != word[j + 1]]
            if not spots:
                return None
            j = rng.choice(spots)
            kept = [word[:j] + word[j + 1] + word[j] + word[j + 2 :]]
            swapped, forced = 1, "char_swap"
        else:
            return None
        noised = joiner.join(kept)
    if noised.strip() == text.strip() or not noised.strip():
        return None
    info = {"dropped": dropped, "swapped": swapped}
    if forced:
        info["forced"] = forced
    return noised, info


def noised_system_name(system: str) -> str:
    return f"noised({system})"


def noised_pair(
    candidates: list[Candidate], source: str, settings: NoiseSettings, tgt_lang: str | None = None
) -> tuple[Selection, dict | None]:
    """(chosen = argmax candidate, rejected = its noised copy) and the noise edit counts."""
    if not candidates:
        return Selection(None, None, DROP_TOO_FEW), None
    _check_finite(candidates)
    chosen = select_chosen(candidates)
    if is_blank(chosen.text):
        return Selection(chosen, None, DROP_EMPTY_TEXT), None
    out = noise_text(chosen.text, source, settings, tgt_lang)
    if out is None:
        return Selection(chosen, None, DROP_NOISE_FAILED), None
    text, info = out
    return Selection(chosen, Candidate(noised_system_name(chosen.system), text, float("nan"))), info


def win_counts(system_scores: list[float | None], ref_scores: list[float | None]) -> dict:
    """How often a system's score beats the reference's on the same source (paper Table 1).

    Sources where either side has no score are left out (an empty output is scored like any text); ties are counted
    on their own, never as wins.
    """
    wins = ties = losses = 0
    for s, r in zip(system_scores, ref_scores):
        if s is None or r is None:
            continue
        if s > r:
            wins += 1
        elif s == r:
            ties += 1
        else:
            losses += 1
    n = wins + ties + losses
    return {
        "n": n,
        "wins": wins,
        "ties": ties,
        "losses": losses,
        "win_ratio": wins / n if n else None,
        "tie_ratio": ties / n if n else None,
    }


def preference_record(
    source: str,
    src_lang: str,
    tgt_lang: str,
    sel: Selection,
    candidates: list[Candidate],
    scorer: str,
    reference: str | None = None,
    *,
    scorer_identity: str | None = None,
    components: dict[str, dict[str, float]] | None = None,
    extra: dict | None = None,
) -> dict:
    """A row of the project's preference JSONL, with provenance: both sides' systems and all scores.

    ``components`` (system -> component name -> score) keeps the parts of a composite score
    (KIWI and XCOMET of their mean); ``extra`` adds keys to the provenance (e.g. noise edits).
    """
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
    prov = row["provenance"]
    if scorer_identity is not None:
        prov["scorer_identity"] = scorer_identity
    if components:
        prov["score_components"] = components
    if extra:
        prov.update(extra)
    if reference is not None:
        row["reference"] = reference
    return row


def _present(text: str | None, score: float | None) -> bool:
    return text is not None and score is not None


def build_pairs(
    sources: list[str],
    candidates: dict[str, list[str]],
    scores: dict[str, list[float]],
    src_lang: str,
    tgt_lang: str,
    scorer: str,
    references: list[str] | None = None,
    *,
    scorer_identity: str | None = None,
    components: dict[str, dict[str, list[float | None]]] | None = None,
    negatives: str = "real",
    noise: NoiseSettings | None = None,
) -> tuple[list[dict], BuildCounts]:
    """Preference rows for every source from aligned candidate texts and their scores.

    ``candidates`` is ordered: its insertion order is the tie-breaking order (put ``ref`` first to
    follow the paper). ``references`` (optional) travel with each row for SFT-on-reference runs.
    A candidate whose text or score is None is left out for that source and counted in
    ``BuildCounts.missing_by_system``. An empty text is a candidate like any other (scored as the
    scorer scores it, counted in ``empty_by_system``); a pair with an empty side is dropped as
    ``empty_text``. A NaN or infinite score raises :class:`NonFiniteScore` naming the system and
    the source line.

    ``negatives="noised"`` (SPEC section 7 ablation): the chosen side is selected as usual and
    the rejected side is a noised copy of it (``NoiseSettings``), named ``noised(<system>)``.
    ``components`` (system -> component -> per-source scores) go into each row's provenance.
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
    noise = noise or NoiseSettings()
    names = list(candidates)
    for name in names:
        if name not in scores:
            raise ValueError(f"candidate system {name!r} has texts but no scores")
        if len(candidates[name]) != len(sources) or len(scores[name]) != len(sources):
            raise ValueError(f"candidate system {name!r}: {len(candidates[name])} texts / {len(scores[name])} scores "
                             f"for {len(sources)} sources")
    if references is not None and len(references) != len(sources):
        raise ValueError(f"{len(references)} references for {len(sources)} sources")
    rows, counts = [], BuildCounts()
    for i, src in enumerate(sources):
        cands = []
        for n in names:
            text, score = candidates[n][i], scores[n][i]
            if text is not None and is_blank(text):
                counts.empty_by_system[n] = counts.empty_by_system.get(n, 0) + 1
            if score is not None and not math.isfinite(float(score)):
                raise NonFiniteScore(f"source line {i + 1}: the {scorer} score of system {n!r} is {float(score)}; "
                                     "a NaN or infinite score cannot rank translations (check the scorer)")
            if _present(text, score):
                cands.append(Candidate(n, text, float(score)))
            else:
                counts.missing_by_system[n] = counts.missing_by_system.get(n, 0) + 1
        extra = None
        if negatives == "noised":
            sel, info = noised_pair(cands, src, noise, tgt_lang)
            extra = {"negatives": "noised", "noise": info} if info is not None else None
        else:
            sel = select_pair(cands)
        counts.add(sel)
        if not sel.kept:
            continue
        comps = None
        if components:
            comps = {
                c.system: {k: v[i] for k, v in components.get(c.system, {}).items() if v[i] is not None}
                for c in cands
            }
        rows.append(
            preference_record(
                src, src_lang, tgt_lang, sel, cands, scorer,
                references[i] if references else None,
                scorer_identity=scorer_identity, components=comps, extra=extra,
            )
        )
    return rows, counts
