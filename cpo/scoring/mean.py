"""A weighted mean of scorers: the paper's KIWI-XXL + XCOMET average (SPEC section 2)."""
from __future__ import annotations

import math
from collections.abc import Sequence

from cpo.scoring.base import Scorer


class MeanScorer(Scorer):
    """Weighted mean of several scorers.

    Each member receives references only if it uses them, so a reference-free mean stays
    reference-free. ``weights`` default to equal; they are normalised to sum to 1.
    """

    def __init__(
        self, scorers: Sequence[Scorer], weights: Sequence[float] | None = None, name: str = "mean"
    ) -> None:
        self.scorers = list(scorers)
        if not self.scorers:
            raise ValueError(f"MeanScorer {name!r}: needs at least one scorer")
        for i, s in enumerate(self.scorers):
            if not isinstance(s, Scorer):
                raise TypeError(f"MeanScorer {name!r}: member {i} is {type(s).__name__}, not a Scorer")
        names = [s.name for s in self.scorers]
        if len(set(names)) != len(names) or name in names:
            raise ValueError(f"MeanScorer {name!r}: member names must be unique and differ from it, got {names}")
        w = [1.0] * len(self.scorers) if weights is None else [float(x) for x in weights]
        if len(w) != len(self.scorers):
            raise ValueError(f"MeanScorer {name!r}: {len(w)} weights for {len(self.scorers)} scorers")
        if any(x < 0 or not math.isfinite(x) for x in w) or sum(w) <= 0:
            raise ValueError(f"MeanScorer {name!r}: weights must be finite, non-negative, not all zero: {w}")
        self.weights = [x / sum(w) for x in w]
        self.name = name

    @property
    def requires_reference(self) -> bool:  # type: ignore[override]
        return any(s.requires_reference for s in self.scorers)

    @property
    def uses_reference(self) -> bool:  # type: ignore[override]
        return any(s.uses_reference for s in self.scorers)

    @property
    def uses_tgt_lang(self) -> bool:  # type: ignore[override]
        return any(s.uses_tgt_lang for s in self.scorers)

    @property
    def identity(self) -> str:
        parts = ",".join(f"{w:.6g}*{s.identity}" for w, s in zip(self.weights, self.scorers))
        return f"mean({parts})"

    def set_progress(self, on: bool) -> None:
        for s in self.scorers:
            s.set_progress(on)

    def _combine(self, member_scores: list[list[float]]) -> list[float]:
        return [sum(w * x for w, x in zip(self.weights, col)) for col in zip(*member_scores)]

    def _score(self, sources, hypotheses, references, tgt_lang):
        return self._combine([s.score(sources, hypotheses, references, tgt_lang) for s in self.scorers])

    def score_components(self, sources, hypotheses, references=None, tgt_lang=None):
        """Each member's scores by name, plus the mean under ``self.name``."""
        sources, hypotheses, references = self.check_inputs(sources, hypotheses, references)
        out = {s.name: s.score(sources, hypotheses, references, tgt_lang) for s in self.scorers}
        out[self.name] = self._combine(list(out.values())) if hypotheses else []
        return out
