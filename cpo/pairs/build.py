"""Preference rows (the project's JSONL, with provenance) from aligned candidates and scores, by the paper's rule."""
from __future__ import annotations

import math

from cpo.pairs.noise import NoiseSettings, noised_pair
from cpo.pairs.rule import NEGATIVES, BuildCounts, Candidate, NonFiniteScore, Selection, select_pairs
from cpo.text import is_blank, normalize_space


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
            # Keyed by candidate id: the system's name, or name#k for the k-th candidate of a multi-candidate file.
            "scores": {c.id: c.score for c in candidates},
        },
    }
    prov = row["provenance"]
    for side, c in (("chosen", sel.chosen), ("rejected", sel.rejected)):
        if c.sample is not None:
            prov[f"{side}_sample"] = c.sample
    duplicates = [c.id for c in candidates if c.duplicate]
    if duplicates:
        prov["duplicates"] = duplicates
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


def _check_score(score: float | None, i: int, name: str, scorer: str) -> None:
    if score is not None and not math.isfinite(float(score)):
        raise NonFiniteScore(f"source line {i + 1}: the {scorer} score of system {name!r} is {float(score)}; "
                             "a NaN or infinite score cannot rank translations (check the scorer)")


def _check_aligned(n: int, texts: dict, scores: dict, what: str) -> None:
    for name in texts:
        if name not in scores:
            raise ValueError(f"{what} {name!r} has texts but no scores")
        if len(texts[name]) != n or len(scores[name]) != n:
            raise ValueError(f"{what} {name!r}: {len(texts[name])} texts / {len(scores[name])} scores for {n} sources")


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
    samples: dict[str, list[list[str]]] | None = None,
    sample_scores: dict[str, list[list[float]]] | None = None,
    sample_components: dict[str, dict[str, list[list[float]]]] | None = None,
    pairs_per_source: int = 1,
    min_gap: float = 0.0,
) -> tuple[list[dict], BuildCounts]:
    """Preference rows for every source from aligned candidate texts and their scores.

    ``candidates`` is ordered: its insertion order is the tie-breaking order (put ``ref`` first to
    follow the paper). ``references`` (optional) travel with each row for SFT-on-reference runs.
    A candidate whose text or score is None is left out for that source and counted in
    ``BuildCounts.missing_by_system``. An empty text is a candidate like any other (scored as the
    scorer scores it, counted in ``empty_by_system``); a pair with an empty side is dropped as
    ``empty_text``. A NaN or infinite score raises :class:`NonFiniteScore` naming the system and
    the source line.

    ``samples`` (system -> per source, its list of candidates; ``sample_scores`` alike): multi-candidate
    systems, every candidate of which competes, after the single systems in the tie order. A sample whose
    whitespace-normalised text equals an earlier candidate's of the same source is marked a duplicate,
    counted and left out (``cpo.pairs.rule.select_pairs``). ``pairs_per_source`` and ``min_gap``: see there.

    ``negatives="noised"`` (SPEC section 7 ablation): the chosen side is selected as usual and
    the rejected side is a noised copy of it (``NoiseSettings``), named ``noised(<system>)``.
    ``components`` (system -> component -> per-source scores; ``sample_components`` with per-source lists)
    go into each row's provenance, keyed by candidate id.
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives must be one of {', '.join(NEGATIVES)}, got {negatives!r}")
    noise = noise or NoiseSettings()
    samples, sample_scores = samples or {}, sample_scores or {}
    _check_aligned(len(sources), candidates, scores, "candidate system")
    _check_aligned(len(sources), samples, sample_scores, "sample system")
    for name in samples:
        if name in candidates:
            raise ValueError(f"system {name!r} is both a single-output and a multi-candidate system")
        for i, (texts, values) in enumerate(zip(samples[name], sample_scores[name])):
            if len(texts) != len(values):
                raise ValueError(f"sample system {name!r}, source {i + 1}: {len(texts)} candidates, "
                                 f"{len(values)} scores")
    if references is not None and len(references) != len(sources):
        raise ValueError(f"{len(references)} references for {len(sources)} sources")
    names = list(candidates)
    rows, counts = [], BuildCounts()
    for i, src in enumerate(sources):
        cands, comps, seen = [], {}, set()
        for n in names:
            text, score = candidates[n][i], scores[n][i]
            if text is not None and is_blank(text):
                counts.empty_by_system[n] = counts.empty_by_system.get(n, 0) + 1
            _check_score(score, i, n, scorer)
            if _present(text, score):
                cands.append(Candidate(n, text, float(score)))
                seen.add(normalize_space(text))
                comps[n] = {k: v[i] for k, v in (components or {}).get(n, {}).items() if v[i] is not None}
            else:
                counts.missing_by_system[n] = counts.missing_by_system.get(n, 0) + 1
        for n in samples:
            for k, (text, score) in enumerate(zip(samples[n][i], sample_scores[n][i])):
                if is_blank(text):
                    counts.empty_by_system[n] = counts.empty_by_system.get(n, 0) + 1
                _check_score(score, i, f"{n}#{k}", scorer)
                key = normalize_space(text)
                c = Candidate(n, text, float(score), sample=k, duplicate=key in seen)
                seen.add(key)
                cands.append(c)
                comps[c.id] = {name: v[i][k] for name, v in (sample_components or {}).get(n, {}).items()}
        extra = None
        if negatives == "noised":
            sel, info = noised_pair([c for c in cands if not c.duplicate], src, noise, tgt_lang)
            extra = {"negatives": "noised", "noise": info} if info is not None else None
            selections = [sel]
        else:
            selections = select_pairs(cands, pairs_per_source, min_gap)
        counts.add_source(cands, selections)
        for rank, sel in enumerate(selections, 1):
            if not sel.kept:
                continue
            more = dict(extra or {})
            if pairs_per_source > 1:
                more["rejected_rank"] = rank  # 1 = the worst candidate
            rows.append(
                preference_record(
                    src, src_lang, tgt_lang, sel, cands, scorer,
                    references[i] if references else None,
                    scorer_identity=scorer_identity, components=comps if (components or sample_components) else None,
                    extra=more or None,
                )
            )
    return rows, counts
