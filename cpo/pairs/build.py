"""Preference rows (the project's JSONL, with provenance) from aligned candidates and scores, by the paper's rule."""
from __future__ import annotations

import math

from cpo.pairs.noise import NoiseSettings, noised_pair
from cpo.pairs.rule import NEGATIVES, BuildCounts, Candidate, NonFiniteScore, Selection, select_pair
from cpo.text import is_blank


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
