"""Scoring candidates for pair building: single outputs and multi-candidate lists, one (cached) scorer call each.

``scripts/build_preferences.py`` and the rounds app (``cpo.rounds``) both score here. Empty hypotheses are
scored like any other text, as sacrebleu scores an empty line: an empty output is the system's translation
of that source, and leaving it out would flatter the system's mean and win ratio. A non-finite score is a
``ScoreError`` naming the candidate's file and line when ``where(i)`` says it.
"""
from __future__ import annotations

from collections.abc import Callable

from cpo.mt.parallel import ParallelData
from cpo.scoring import Scorer, ScoreError


def score_texts(scorer: Scorer, data: ParallelData, texts: list[str],
                where: Callable[[int], str] | None = None) -> dict[str, list[float]]:
    """Score components (``{name: per-source score}``) of one candidate list aligned with ``data``."""
    try:
        return scorer.score_components(data.sources, texts, data.references, data.tgt_lang)
    except ScoreError as e:
        raise (e.located(where=where(e.index)) if where else e) from None


def flat_position(candidates: list[list[str]], flat: int) -> tuple[int, int]:
    """(row, candidate) of the ``flat``-th candidate of per-source candidate lists."""
    for row, cands in enumerate(candidates):
        if flat < len(cands):
            return row, flat
        flat -= len(cands)
    raise IndexError(flat)


def _unflatten(values: list, candidates: list[list[str]]) -> list[list]:
    out, start = [], 0
    for cands in candidates:
        out.append(values[start:start + len(cands)])
        start += len(cands)
    return out


def score_candidate_lists(scorer: Scorer, data: ParallelData, candidates: list[list[str]],
                          where: Callable[[int, int], str] | None = None) -> dict[str, list[list[float]]]:
    """Score components of every candidate of per-source lists (``candidates[i]`` for source ``i``), in one
    scorer call; ``where(row, k)`` names candidate ``k`` of source ``row`` in a non-finite score's message."""
    rows = [i for i, cands in enumerate(candidates) for _ in cands]
    flat = ParallelData([data.sources[i] for i in rows],
                        None if data.references is None else [data.references[i] for i in rows],
                        data.src_lang, data.tgt_lang, data.path, data.format, data.ref_path)
    texts = [t for cands in candidates for t in cands]
    located = (lambda i: where(*flat_position(candidates, i))) if where else None
    comps = score_texts(scorer, flat, texts, located)
    return {k: _unflatten(v, candidates) for k, v in comps.items()}
